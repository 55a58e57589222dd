"""Jobs: model, replicated queue, leases, matching, the bottleneck classifier and
the brokerage core (claims, matches, releases, sources under bottlenecks).

The node uses only the names exported here.
"""

from .brokerage import (
    BrokerError,
    BrokerParams,
    NodeView,
    Source,
    claim,
    match,
    order_sources,
    pick_source,
    should_release,
    stage_estimate,
)
from .health import Classifier, HealthError, HealthParams
from .homeset import DEFAULT_R, Slot, home_set
from .job import JobSpec, SignedJob, SpecError, parse_job_id
from .jobs import JobService
from .links import Link, LinkBook
from .matching import Capacity, Offer, dataset_names
from .placement import NodeSeen, Placement, node_state
from .queue import Membership, QueueConfig, QueueNode, SlotStore
from .queue_rpc import queue_methods
from .record import FINAL, MAX_OUTPUTS, STATES, Failure, JobRecord
from .worker import ClaimPlan, Worker

__all__ = [
    "BrokerError",
    "BrokerParams",
    "NodeView",
    "Source",
    "claim",
    "match",
    "order_sources",
    "pick_source",
    "should_release",
    "stage_estimate",
    "Classifier",
    "HealthError",
    "HealthParams",
    "DEFAULT_R",
    "FINAL",
    "MAX_OUTPUTS",
    "STATES",
    "Capacity",
    "Failure",
    "JobRecord",
    "JobService",
    "Link",
    "LinkBook",
    "JobSpec",
    "Membership",
    "Offer",
    "QueueConfig",
    "QueueNode",
    "SignedJob",
    "Slot",
    "SlotStore",
    "SpecError",
    "Worker",
    "ClaimPlan",
    "NodeSeen",
    "Placement",
    "node_state",
    "dataset_names",
    "home_set",
    "parse_job_id",
    "queue_methods",
]
