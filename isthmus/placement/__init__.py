"""Op-level device placement and cloud-configuration search (AutoDeep, Baechi, Placeto).

- `graph`: op graphs from torch.fx (FLOPs, bytes, per-op CPU latency, roofline-scaled to GPUs).
- `simulator`: event-driven execution of a placed graph over devices and links.
- `heuristics`: single device, expert pipeline, HEFT, m-ETF, m-SCT.
- `learned`: graph policy trained with REINFORCE against the simulator.
- `exact`: a MILP (HiGHS) over placement and op order: the optimum / a lower bound for small graphs.
- `configure`: Bayesian optimisation (BoTorch) of (region, instance type, count) vs LCF and uniform.
"""

from isthmus.placement.configure import ConfigSpace, search, space_from_spec
from isthmus.placement.devices import KINDS, DeviceSet, parse_devices
from isthmus.placement.exact import ExactResult, optimal_placement
from isthmus.placement.graph import OpGraph, from_module, from_zoo, synthetic_graph
from isthmus.placement.heuristics import HEURISTICS
from isthmus.placement.learned import learn_placement
from isthmus.placement.place import compare_policies, fill_spec
from isthmus.placement.simulator import SimResult, simulate

__all__ = ["ConfigSpace", "DeviceSet", "ExactResult", "HEURISTICS", "KINDS", "OpGraph", "SimResult",
           "compare_policies", "fill_spec", "from_module", "from_zoo", "learn_placement", "optimal_placement",
           "parse_devices", "search", "simulate", "space_from_spec", "synthetic_graph"]
