"""Local cluster bring-up survives site nodes whose raylets never register (seen on CI: the GCS stalled 30 s and a
raylet gave up): `_wait_for_sites` starts such a node again instead of waiting out its timeout.

One head for the module, no site node started by hand: the first test finds them all missing, the second has
`_wait_for_sites` start them, the third adds a site whose "raylet" runs but never registers (killed, started again)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from isthmus.platform import cluster as cluster_mod  # noqa: E402
from isthmus.platform.nodes import raylet_pids  # noqa: E402
from isthmus.spec import parse_spec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SPEC_DICT = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "runtime-local.yaml").read_text())
SPEC = parse_spec(SPEC_DICT)
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def head():
    c = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    yield c
    c.shutdown()


def _raylets(head: Cluster, resource: str) -> list[int]:
    return raylet_pids(head.head_node.get_session_dir_path()).get(resource, [])


def test_sites_without_a_node_are_named_with_the_fix(head):
    started = {resource: time.monotonic() for resource in cluster_mod.site_resources(SPEC).values()}
    with pytest.raises(cluster_mod.ClusterError, match=r"us-east.*eu-west.*cam-1.*--resources='\{\"region:us-east\""):
        cluster_mod._wait_for_sites(SPEC, head, started, NODE_ARGS, timeout_s=1.0, max_restarts=0)
    assert all(_raylets(head, resource) == [] for resource in started)


def test_sites_whose_raylet_is_gone_are_started_again(head, caplog):
    # Each node "was started" a moment ago but no raylet carries its resource: as after raylets that exited.
    started = {resource: time.monotonic() for resource in cluster_mod.site_resources(SPEC).values()}
    with caplog.at_level(logging.WARNING, logger=cluster_mod.__name__):
        cluster_mod._wait_for_sites(SPEC, head, started, NODE_ARGS, timeout_s=240.0)
    assert cluster_mod.missing_sites(SPEC, head.global_state.node_table()) == []
    assert caplog.text.count("exited before registering; starting it again") == 3
    for resource in started:
        assert len(_raylets(head, resource)) == 1, f"the restarted node's raylet is found by {resource}"
    assert _raylets(head, "region:us-eas") == [], "a resource matches whole, not as a prefix"


def test_a_raylet_that_never_registers_is_killed_and_started_again(head, caplog):
    import subprocess
    import sys

    spec = parse_spec({**SPEC_DICT, "regions": [*SPEC_DICT["regions"], {**SPEC_DICT["regions"][1], "name": "ap-south"}]})
    session = head.head_node.get_session_dir_path()
    # A process that looks like this session's raylet for region:ap-south but never registers.
    stuck = subprocess.Popen(["bash", "-c", 'exec -a /opt/ray/raylet "$0" -c "import time; time.sleep(300)" '
                              '"--static_resource_list=region:ap-south,1.0,CPU,1" "--resource_dir=$1/runtime_resources"',
                              sys.executable, session])
    try:
        deadline = time.monotonic() + 10
        while _raylets(head, "region:ap-south") != [stuck.pid] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _raylets(head, "region:ap-south") == [stuck.pid]
        started = dict.fromkeys(cluster_mod.site_resources(spec).values(), time.monotonic())
        started["region:ap-south"] = time.monotonic() - cluster_mod._REGISTER_GRACE_S - 1   # past its grace
        with caplog.at_level(logging.WARNING, logger=cluster_mod.__name__):
            cluster_mod._wait_for_sites(spec, head, started, NODE_ARGS, timeout_s=240.0)
        assert stuck.wait(timeout=10) == -9, "the stuck raylet was killed"
        assert caplog.text.count("did not register in time; starting it again") == 1
        assert cluster_mod.missing_sites(spec, head.global_state.node_table()) == []
    finally:
        stuck.kill()
