"""The seeded spec generators of the geo benchmarks (isthmus/optimizer/generate.py)."""

import numpy as np

from isthmus.optimizer.generate import generate_small_services_spec
from isthmus.optimizer.routes import build_routes


def test_small_services_shape():
    """8 regions × 4 types, 3 models × 4 versions, 3 data versions, 10–500 req/s, sources spread evenly."""
    spec = generate_small_services_spec(7, 40)
    assert len(spec.regions) == 8 and all(len(r.instance_types) == 4 for r in spec.regions)
    assert len(spec.models) == 3 and all(len(m.versions) == 4 for m in spec.models)
    assert all(len(s.data_versions) == 3 for s in spec.sources)
    rates = np.array(spec.service_rates_rps())
    assert rates.min() >= 10 and rates.max() <= 500
    assert {s.location for s in spec.sources} == {r.name for r in spec.regions}
    table = build_routes(spec, 0.0)
    assert len(table.pv_pool) == 8 * 4 * 12              # pools (site, type, version) shared by the services
    assert 100 <= len(table) / 40 <= 384                 # routes per service, as the bench sizes them
    assert generate_small_services_spec(7, 40) == spec   # seeded
