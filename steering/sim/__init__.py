"""Steering in the grid simulator: bottlenecks, and four ways of placing jobs.

Built on ``replication.sim`` (its engine, network, grid, replicas, node
deaths): ``scenario`` makes the ``bottleneck`` workload (bulk tasks that keep
the grid busy) and its schedule (a site's link at a tenth, a slow storage
node, a site failing every job for an hour); ``grid`` plays it under
``round-robin`` push, ``random`` and ``least-loaded`` pull, and ``gridnode``
(each node's real ``steering.Classifier`` fed from what it observes, and the
real ``steering.brokerage`` core); ``run`` computes the figures and the
oracle.  ``scripts/simulate.py --scenario bottleneck`` is the command line;
``docs/simulator.md`` describes the model.
"""

from .grid import (
    SCHEDULERS,
    BottleneckGrid,
    LeastLoadedPull,
    RandomPull,
    RoundRobinPush,
    Scheduler,
    Steering,
    make_scheduler,
)
from .run import capacity_steps, oracle, run_all, run_one
from .scenario import KINDS, Bottleneck, BottleneckScenario, World, bottleneck, build_world

__all__ = [
    "KINDS", "SCHEDULERS", "Bottleneck", "BottleneckGrid", "BottleneckScenario",
    "LeastLoadedPull", "RandomPull", "RoundRobinPush", "Scheduler", "Steering", "World",
    "bottleneck", "build_world", "capacity_steps", "make_scheduler", "oracle", "run_all",
    "run_one",
]
