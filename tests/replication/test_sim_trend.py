"""The trend policy in the simulator: the real cores add replicas near a hot spot and
trim back to the minimum once it has cooled."""

from __future__ import annotations

from replication import PolicyParams
from replication.sim import GB, Grid, Static, Trend

from .simkit import world

HOUR = 3600.0


def hot_world():
    # Dataset 0 (5 GB) lives at sites 0 and 1.  For two hours site 3 reads it
    # 24 times per 5-minute bucket (a 1 GB read, one minute of compute each);
    # then nothing, until one last job 3 hours after the cool-down keeps the grid
    # running.
    jobs = [(t * 12.5, 3, 0, GB, 60.0) for t in range(int(2 * HOUR / 12.5))]
    jobs.append((5 * HOUR + PolicyParams().cooldown, 0, 1, GB, 60.0))
    return world([3, 3, 3, 3], [(5 * GB, (0, 3)), (1 * GB, (1, 4))], jobs)


def test_trend_adds_replicas_at_the_hot_site_and_returns_to_the_minimum():
    w = hot_world()
    policy = Trend()
    seen: list[tuple[float, int, set[str], int]] = []

    def record(ds, now, decision):
        if ds.index == 0:
            sites = {r.node.site.name for r in ds.replicas.values() if r.complete}
            seen.append((now, len(ds.replicas), sites, decision.target))

    policy.on_decision = record
    grid = Grid(w, policy)
    stats = grid.run()
    hot = [s for s in seen if s[0] <= 2 * HOUR]
    assert max(target for *_, target in hot) > 2
    # During the hot spot a replica appeared at the hot site, and the count rose.
    assert any("s3" in sites for _, _, sites, _ in hot)
    assert max(count for _, count, _, _ in hot) > 2
    assert policy.actions["add"] >= 1
    # Cooled down: back to the minimum, by two-phase drops.
    ds = grid.datasets[0]
    assert len(ds.replicas) == ds.min_replicas == 2
    assert all(r.complete and not r.leaving for r in ds.replicas.values())
    assert policy.actions["drop"] == policy.actions["add"]
    assert policy.actions["announce_drop"] >= policy.actions["drop"]
    # The first drop came after the demand had gone, and after the count had stayed
    # above the target for the whole cool-down.
    first_drop = min(b[0] for a, b in zip(seen, seen[1:], strict=False) if b[1] < a[1])
    assert first_drop > 2 * HOUR
    above = [now for now, count, _, target in seen if now < first_drop and count > target]
    at_or_below = [now for now, count, _, target in seen
                   if now < first_drop and count <= target]
    since = min(t for t in above if t > max(at_or_below))
    assert first_drop - since >= policy.pp.cooldown
    assert stats.datasets_lost == 0 and stats.jobs_finished == len(w.jobs)


def test_the_hot_site_waits_less_under_trend_than_under_static():
    w = hot_world()
    static, trend = Grid(w, Static()).run(), Grid(w, Trend()).run()
    n = len(w.jobs) - 1
    late = slice(n // 2, n)       # the second hour of the hot spot
    assert sum(trend.waits[late]) < 0.5 * sum(static.waits[late])
    assert trend.lan_stage_ins + trend.local_hits > static.lan_stage_ins + static.local_hits
