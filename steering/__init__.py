"""Jobs: model, replicated queue, leases, matching, bottlenecks, brokerage.

Nothing here yet; see docs/ and the issues for what lands next.
"""
