"""A discrete-event grid simulator: the replica policies on one workload.

Sites of nodes joined by shared WAN links, datasets with replicas, jobs that
stage a dataset in and compute, nodes that die; three replica policies
(``static``, ``cache-on-access`` and gridnode's ``trend``, which runs the
real ``replication.trends`` and ``replication.policy`` cores) on the same
jobs.  ``scripts/simulate.py`` is the command line.  Module by module:
``engine`` (clock and events), ``model`` (what the grid is made of, the
network), ``workload`` (scenarios), ``grid`` (jobs, failures, replication
copies, placement), ``policies``, ``run`` (figures); ``bound`` replays a
workload's reads without simulating, to show what any placement could reach
(``scripts/placement_bound.py``).
"""

from .engine import Engine, SimError
from .grid import Grid, Job, LeastLoaded, Placement, Replicator, Stats
from .model import CACHE, GB, ORIGIN, POLICY, Dataset, Gbps, Network, Node, Replica, Site
from .policies import POLICIES, CacheOnAccess, Policy, Static, Trend
from .run import percentile, run_one, run_policies, summary
from .workload import (
    SCENARIOS,
    Scenario,
    ScenarioError,
    Workload,
    build,
    hot_spot,
    weighted_sample,
)

__all__ = [
    "weighted_sample",
    "CACHE", "GB", "ORIGIN", "POLICIES", "POLICY", "SCENARIOS",
    "CacheOnAccess", "Dataset", "Engine", "Gbps", "Grid", "Job", "LeastLoaded", "Network",
    "Node", "Placement", "Policy", "Replica", "Replicator", "Scenario", "ScenarioError",
    "SimError", "Site", "Static", "Stats", "Trend", "Workload", "build", "hot_spot",
    "percentile", "run_one", "run_policies", "summary",
]
