"""The order of the queue (pure): priority, then fair share between owners, then age."""

from __future__ import annotations

from rayfleet.dispatch import next_in_queue
from rayfleet.ledger import JobRecord


def job(name: str, created: float, priority: int = 0, owner: str = "") -> JobRecord:
    return JobRecord(name, created, "true", {"priority": priority, "owner": owner}, None, None, None)


def order(jobs: list[JobRecord], active: dict[str, int], fair_share: bool) -> list[str]:
    """Take jobs one by one as the dispatch loop does, counting each placed job as active for its owner."""
    waiting, active, out = list(jobs), dict(active), []
    while waiting:
        chosen = next_in_queue(waiting, active if fair_share else {})
        waiting.remove(chosen)
        out.append(chosen.id)
        active[chosen.owner] = active.get(chosen.owner, 0) + 1
    return out


def test_higher_priority_first_then_oldest_first():
    jobs = [job("old-low", 1), job("new-high", 3, priority=10), job("mid", 2, priority=5), job("new-low", 4)]
    assert order(jobs, {}, fair_share=False) == ["new-high", "mid", "old-low", "new-low"]


def test_fair_share_alternates_owners_within_a_priority_and_never_overrides_priority():
    jobs = [job("a1", 1, owner="a"), job("a2", 2, owner="a"), job("a3", 3, owner="a"), job("b1", 4, owner="b")]
    jobs.append(job("urgent-a", 5, priority=1, owner="a"))
    assert order(jobs, {"a": 2}, fair_share=True) == ["urgent-a", "b1", "a1", "a2", "a3"]
    assert order(jobs, {"a": 2}, fair_share=False) == ["urgent-a", "a1", "a2", "a3", "b1"]
