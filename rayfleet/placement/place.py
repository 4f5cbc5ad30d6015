"""`place`: the pure placement decision over snapshots, with a reason for every cluster it rejects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayfleet.capacity import ClusterSnapshot, describe_node
from rayfleet.config import POLICIES, Cluster
from rayfleet.errors import InvalidRequestError
from rayfleet.placement.bundles import bundle_vectors, distinct_fit_count, fit_gang, gang_score
from rayfleet.placement.fit import Hold, effective_free, fit_mask, request_vector
from rayfleet.placement.fragmentation import RequestMix
from rayfleet.placement.policies import cluster_key, node_score
from rayfleet.resources import ACCELERATOR_PREFIX, EPSILON, Gang, Resources


@dataclass(frozen=True)
class PlacementRequest:
    """What to place and under which constraints.

    Attributes:
        resources: what the job needs on one node; ignored for fit when ``gang`` is given.
        labels: every one must match the cluster's labels.
        cluster: pin to this cluster.
        policy: ``binpack``, ``spread`` or ``cost``.
        exclude: clusters not to use (failover).
        gang: bundles that must all fit at once on one cluster, each on a node its strategy allows.
    """

    resources: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster: str | None = None
    policy: str = "binpack"
    exclude: frozenset[str] = frozenset()
    gang: Gang | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidRequestError(f"unknown policy {self.policy!r}", f"use one of {', '.join(POLICIES)}")


@dataclass(frozen=True)
class Option:
    """How one cluster fares: chosen node and score when it fits, the reason when it does not.

    Attributes:
        cluster: the cluster's name.
        fits: whether the request fits there now.
        reason: why it does not fit (empty when it does).
        score: lower is better; ``None`` when it does not fit.
        node_id: the node it would go to (for a gang, the node of its first bundle).
        accelerator: the concrete GPU model chosen, if the request allowed several.
        too_large: it would not fit even on an empty node of this cluster.
        bundle_nodes: for a gang, the node of each bundle, in bundle order.
    """

    cluster: str
    fits: bool
    reason: str = ""
    score: tuple[float, float] | None = None
    node_id: str | None = None
    accelerator: str | None = None
    too_large: bool = False
    bundle_nodes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of `place`: every cluster's `Option`, the fitting ones first, best first."""

    options: tuple[Option, ...]

    @property
    def chosen(self) -> Option | None:
        return self.options[0] if self.options and self.options[0].fits else None

    @property
    def rejects(self) -> dict[str, str]:
        return {o.cluster: o.reason for o in self.options if not o.fits}


def place(
    request: PlacementRequest,
    clusters: Sequence[Cluster],
    snapshots: Mapping[str, ClusterSnapshot],
    holds: Sequence[Hold] = (),
    *,
    mix: RequestMix | None = None,
) -> Decision:
    """Choose a cluster and node for a request. Pure: no I/O, deterministic for equal inputs.

    Args:
        request: the request and its constraints.
        clusters: the fleet's clusters (labels, prices).
        snapshots: the latest reading of each cluster, by name.
        holds: this dispatcher's recent placements not yet visible in the snapshots.
        mix: the request mix ``policy="fragmentation"`` measures against (`fragmentation.learn_mix`); ``None``
            measures each request against its own shape. The other policies ignore it.

    Returns:
        A `Decision`; ``decision.chosen`` is ``None`` when nothing fits, and ``decision.rejects`` says why.

    Example:
        >>> from rayfleet.capacity import ClusterSnapshot
        >>> snap = ClusterSnapshot.from_nodes("a", [("n1", {"CPU": 4}, {"CPU": 1})])
        >>> clusters = [Cluster(name="a", address="http://h:8265")]
        >>> place(PlacementRequest(Resources(cpu=2)), clusters, {"a": snap}).chosen.node_id
        'n1'
    """
    options = []
    for cluster in clusters:
        snapshot = snapshots.get(cluster.name)
        reason = _precheck(request, cluster, snapshot)
        if reason:
            options.append(Option(cluster.name, False, reason))
            continue
        assert snapshot is not None
        mine = [h for h in holds if h.cluster == cluster.name]
        best_on = _best_gang_on if request.gang is not None else _best_on
        options.append(best_on(request, cluster, snapshot, mine, mix))
    recent = {c.name: sum(1 for h in holds if h.cluster == c.name) for c in clusters}
    # equal scores (jobs that ask for nothing): the cluster this dispatcher sent fewer jobs to lately, then by name
    fitting = sorted((o for o in options if o.fits), key=lambda o: (o.score, recent.get(o.cluster, 0), o.cluster))
    rejected = sorted((o for o in options if not o.fits), key=lambda o: o.cluster)
    return Decision(tuple(fitting + rejected))


def _precheck(request: PlacementRequest, cluster: Cluster, snapshot: ClusterSnapshot | None) -> str:
    if request.cluster is not None and cluster.name != request.cluster:
        return f"the job is pinned to cluster {request.cluster!r}"
    if cluster.name in request.exclude:
        return "excluded (an earlier attempt failed here)"
    mismatched = {k: v for k, v in request.labels.items() if cluster.labels.get(k) != v}
    if mismatched:
        k, v = next(iter(sorted(mismatched.items())))
        return f"label {k}={v} does not match (cluster has {k}={cluster.labels.get(k, '<unset>')})"
    if snapshot is None:
        return "no capacity reading yet"
    if not snapshot.healthy:
        return f"unhealthy: {snapshot.error}"
    if not snapshot.node_ids:
        return "the cluster has no alive nodes"
    return ""


def _best_on(
    request: PlacementRequest,
    cluster: Cluster,
    snap: ClusterSnapshot,
    holds: Sequence[Hold],
    mix: RequestMix | None,
) -> Option:
    resources = request.resources
    models = sorted(resources.accelerators) if resources.accelerators else [None]
    free = effective_free(snap, holds)
    scorer = node_score(request.policy, mix)
    best: Option | None = None
    fits_empty = False
    missing: list[str] = []
    for model in models:
        if model is not None and ACCELERATOR_PREFIX + model not in snap.keys:
            missing.append(f"a GPU of model {' or '.join(models)}")  # type: ignore[arg-type]
            continue
        vec = request_vector(snap.keys, resources.to_ray(model))
        if vec is None:
            missing += [k for k, v in resources.to_ray(model).items() if v > 0 and k not in snap.keys]
            continue
        fits_empty = fits_empty or bool(fit_mask(snap.total, vec).any())
        rows = np.flatnonzero(fit_mask(free, vec))
        if not len(rows):
            continue
        scores = scorer(free[rows], snap.total[rows], vec, snap.keys, resources)
        i = int(np.argmin(scores))  # first of equals: the lowest node index, deterministic
        score = (cluster_key(request.policy, cluster, resources), float(scores[i]))
        if best is None or score < best.score:  # type: ignore[operator]
            best = Option(cluster.name, True, score=score, node_id=snap.node_ids[rows[i]], accelerator=model)
    if best is not None:
        return best
    if not fits_empty:
        if missing and len(missing) >= len(models):
            what = ", ".join(dict.fromkeys(missing))
            return Option(cluster.name, False, f"no node has {what}", too_large=True)
        return Option(cluster.name, False, f"too large for every node (largest: {snap.largest_node()})", too_large=True)
    best_free = int(np.argmax(free.sum(axis=1)))
    return Option(
        cluster.name,
        False,
        f"busy: no node has {resources.describe()} free now "
        f"(most free: {describe_node(dict(zip(snap.keys, free[best_free], strict=True)))})",
    )


def _best_gang_on(
    request: PlacementRequest,
    cluster: Cluster,
    snap: ClusterSnapshot,
    holds: Sequence[Hold],
    mix: RequestMix | None,
) -> Option:
    """The best way to fit every bundle of the gang at once on this cluster, or why it cannot."""
    gang = request.gang
    assert gang is not None
    models = sorted(gang.accelerators) if gang.accelerators else [None]
    free = effective_free(snap, holds)
    cluster_part = cluster_key(request.policy, cluster, gang.total)
    best: Option | None = None
    fits_empty = False
    missing: list[str] = []
    for model in models:
        if model is not None and ACCELERATOR_PREFIX + model not in snap.keys:
            missing.append(f"a GPU of model {' or '.join(models)}")  # type: ignore[arg-type]
            continue
        absent = sorted({k for b in gang.to_ray(model) for k, v in b.items() if v > 0 and k not in snap.keys})
        if absent:
            missing += absent
            continue
        fits_empty = fits_empty or fit_gang(snap.total, snap.keys, gang, model) is not None
        rows = fit_gang(free, snap.keys, gang, model)
        if rows is None:
            continue
        score = (cluster_part, gang_score(request.policy, free, snap.total, snap.keys, gang, rows, model, mix=mix))
        if best is None or score < best.score:  # type: ignore[operator]
            nodes = tuple(snap.node_ids[r] for r in rows)
            best = Option(cluster.name, True, score=score, node_id=nodes[0], accelerator=model, bundle_nodes=nodes)
    if best is not None:
        return best
    if not fits_empty:
        if missing and len(missing) >= len(models):
            return Option(cluster.name, False, f"no node has {', '.join(dict.fromkeys(missing))}", too_large=True)
        why = _why_gang_misses(snap.total, snap, gang, models, busy=False)
        return Option(cluster.name, False, f"too large: {why}", too_large=True)
    return Option(cluster.name, False, f"busy: {_why_gang_misses(free, snap, gang, models, busy=True)}")


def _why_gang_misses(
    free: np.ndarray, snap: ClusterSnapshot, gang: Gang, models: Sequence[str | None], busy: bool
) -> str:
    """Why the gang does not fit on ``free`` (what is free now when ``busy``, else the nodes' totals)."""
    usable = [m for m in models if m is None or ACCELERATOR_PREFIX + m in snap.keys]
    model = usable[0] if usable else None
    n = len(gang.bundles)
    head = f"a {gang.strategy} gang of {n}"
    free_word = " free" if busy else ""
    if gang.strategy == "STRICT_SPREAD":
        if len(set(gang.bundles)) == 1:
            vec = request_vector(snap.keys, gang.bundles[0].to_ray(model))
            have = 0 if vec is None else int(fit_mask(free, vec).sum())
            return f"{head} needs {n} nodes with {gang.bundles[0].describe()}{free_word}; {have} has"
        have = max(distinct_fit_count(free, snap.keys, gang, m) for m in usable) if usable else 0
        return f"{head} needs a distinct node for each bundle{free_word}; only {have} of its bundles can have one"
    most = describe_node(dict(zip(snap.keys, free[int(np.argmax(free.sum(axis=1)))], strict=True)))
    most = f"most free on one node: {most}" if busy else f"largest node: {snap.largest_node()}"
    if gang.strategy == "STRICT_PACK":
        return f"{head} needs one node with {gang.total.describe()}{free_word}; none has ({most})"
    vecs = bundle_vectors(snap.keys, gang, model)
    whole = "the cluster's free total" if busy else "the cluster's total"
    if vecs is not None and bool(np.all(free.sum(axis=0) + EPSILON >= vecs.sum(axis=0))):
        return f"{head} ({gang.total.describe()}) fits {whole} but not its nodes one by one ({most})"
    return f"{head} ({gang.total.describe()}) is more than {whole} ({most})"
