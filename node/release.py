"""Which stage-ins a node gives back to the queue: the brokerage's rule (c) on the node.

Pure: fed with the runner's stage-ins (job -> when it began, its datasets), the data
service's fetches in progress (dataset -> began, bytes done, bytes to fetch) and the
node's own view; the monitor calls it every sample and releases what it names.

What the rule needs, from what the node measures:

- ``waited``: since the job's stage-in began (waiting for another job's fetch of the
  same dataset counts: that fetch is the one it waits for);
- ``left``: the bytes still to fetch over the rate the fetch got so far (nothing yet:
  unbounded);
- ``elsewhere``: the whole of it at ``nominal_rate`` (``monitor.nominal_rate_mb_s``):
  no rate is measured per link yet, so "elsewhere" is a configured nominal transfer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from steering import BrokerParams, NodeView, should_release


def stuck_stage_ins(stage_ins: Mapping[str, tuple[float, Sequence[str]]],
                    fetches: Mapping[str, Sequence[float]], now: float, here: NodeView,
                    p: BrokerParams, nominal_rate: float) -> list[tuple[str, str]]:
    """(job, why) of the stage-ins to release now."""
    out: list[tuple[str, str]] = []
    if here.state == "ok":
        return out  # at an ok node the wait comes from elsewhere and would follow the job
    for job, (started, names) in stage_ins.items():
        going = [fetches[n] for n in names if n in fetches]
        total = sum(f[2] for f in going)
        if not going or total <= 0:
            continue  # placing files, or asking the catalog: not a transfer
        done = sum(f[1] for f in going)
        elapsed = now - min(f[0] for f in going)
        rate = done / elapsed if done > 0 and elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else math.inf
        elsewhere = total / nominal_rate
        waited = now - started
        if should_release(waited, left, elsewhere, here, p):
            rest = "no byte yet" if math.isinf(left) else f"{left:.0f} s left here"
            out.append((job, f"stage-in for {waited:.0f} s at a {here.state} node, {rest}, "
                             f"{elsewhere:.0f} s at the nominal rate elsewhere"))
    return out
