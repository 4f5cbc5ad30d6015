"""Unit tests for `rayfleet.placement.packing`: the cutting-stock LP, its knapsack, and which GPUs a size may join."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfleet.placement.packing import OFF_PLAN, PLANNED, SLACK, WHOLE, PackingPlan, best_filling, fewest_gpus

# the sharing sizes of the Alibaba default trace's typical mix, with their frequencies (pods per 1000 sharing pods)
TRACE = {810: 372, 650: 87, 590: 26, 550: 25, 470: 258, 460: 44, 370: 16, 320: 114, 230: 49, 220: 21, 160: 26}


def test_the_plan_pairs_the_trace_sizes_as_the_lp_does():
    plan = PackingPlan.of(TRACE)
    assert plan is not None
    patterns = dict(zip(plan.patterns, plan.share, strict=True))
    assert ((470, 2),) in patterns and ((650, 1), (320, 1)) in patterns
    assert [p for p in patterns if (160, 1) in p] == [((810, 1), (160, 1))]  # the rare 160s go beside 810s only
    assert all(sum(s * n for s, n in p) <= 1000 for p in plan.patterns)


def test_kind_orders_planned_partner_whole_gpu_and_off_plan():
    plan = PackingPlan.of(TRACE)
    assert plan is not None
    # free 190: an 810 inside; 530: a 470; 350: a 650; 1000: untouched; 840: a 160 (waits for an 810)
    free = [190, 530, 350, 1000, 840]
    assert plan.kind(free, 160).tolist() == [PLANNED, OFF_PLAN, OFF_PLAN, WHOLE, OFF_PLAN]
    assert plan.kind(free, 320).tolist() == [OFF_PLAN, OFF_PLAN, PLANNED, WHOLE, OFF_PLAN]
    assert plan.kind(free, 810).tolist() == [OFF_PLAN, OFF_PLAN, OFF_PLAN, WHOLE, PLANNED]
    assert plan.kind(free, 999).tolist() == [PLANNED] * 5  # a size the mix does not know: no preference


def test_no_sharing_sizes_no_plan():
    assert PackingPlan.of({}) is None
    assert PackingPlan.of({1000: 5.0, 0: 1.0}) is None


def test_the_lp_covers_the_demand_in_as_few_gpus_as_the_volume_allows_when_sizes_pair_exactly():
    x, patterns = fewest_gpus([600, 400], [1.0, 1.0])
    used = sum(v * p for v, p in zip(x, patterns, strict=True))
    assert np.all(used >= [1.0 - 1e-9, 1.0 - 1e-9])
    assert abs(x.sum() - 1.0) < 1e-9  # 600 + 400 per GPU


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(50, 900), st.floats(0.0, 2.0), st.integers(0, 3)), min_size=1, max_size=4))
def test_best_filling_is_the_best_by_brute_force(items):
    sizes = np.array([s for s, _, _ in items])
    values = np.array([v for _, v, _ in items])
    limits = np.array([n for _, _, n in items])
    value, counts = best_filling(values, sizes, limits)
    best = max(
        float(values @ c)
        for c in map(np.array, itertools.product(*(range(n + 1) for n in limits)))
        if sizes @ c <= 1000 and all(v > 0 or k == 0 for v, k in zip(values, c, strict=True))
    )
    assert abs(value - best) < 1e-9
    assert sizes @ counts <= 1000 and np.all(counts <= limits)
    assert abs(float(values @ counts) - value) < 1e-9


def test_joins_match_the_parts_of_each_pattern():
    plan = PackingPlan.of(TRACE)
    assert plan is not None
    expected = set()
    for pattern in plan.patterns:
        items = [s for s, n in pattern for _ in range(n)]
        for r in range(len(items)):
            for part in itertools.combinations(range(len(items)), r):
                rest = [items[i] for i in range(len(items)) if i not in part]
                for size in rest:
                    expected.add((1000 - sum(items[i] for i in part), size))
    near = {(f + d, size) for f, size in expected for d in range(-SLACK, SLACK + 1) if 0 <= f + d <= 1000}
    got = {(int(f), plan.sizes[k]) for f, k in zip(*np.nonzero(plan.joins), strict=True)}
    assert got == near
    assert not plan.joins.flags.writeable


def test_a_free_share_off_by_rounding_still_joins_its_pattern():
    # 1/3 GPU is 333 milli; after two of them a snapshot reads 1 - 2 x 0.333.. = 0.333 free, not the planned 334
    plan = PackingPlan.of({333: 1.0})
    assert plan is not None and plan.patterns == (((333, 3),),)
    assert plan.kind([333, 667, 1000, 500], 333).tolist() == [PLANNED, PLANNED, WHOLE, OFF_PLAN]


def test_sizes_given_twice_add_up():
    plan = PackingPlan.of({470.4: 1.0, 470.2: 1.0, 530: 2.0})  # both 470 milli once cut to whole milli
    assert plan is not None and plan.sizes == (530, 470)
    assert plan == PackingPlan.of({530: 1.0, 470: 1.0})  # same plan: the table is not compared
