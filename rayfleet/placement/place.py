"""`place`: the pure placement decision over snapshots, with a reason for every cluster it rejects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayfleet.capacity import ClusterSnapshot, describe_node
from rayfleet.config import POLICIES, Cluster
from rayfleet.errors import InvalidRequestError
from rayfleet.placement.bundles import best_assignment, bundle_vectors, distinct_fit_count
from rayfleet.placement.fit import Hold, effective_free, fit_mask, request_vector
from rayfleet.placement.fragmentation import RequestMix
from rayfleet.placement.policies import cluster_key
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
        unavailable: clusters the job may not use now, with why (cordoned, draining, cannot run the launcher).
    """

    resources: Resources = field(default_factory=Resources)
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster: str | None = None
    policy: str = "binpack"
    exclude: frozenset[str] = frozenset()
    gang: Gang | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidRequestError(f"unknown policy {self.policy!r}", f"use one of {', '.join(POLICIES)}")

    @property
    def wanted(self) -> Gang:
        """What must fit: the gang, or the job's resources as a gang of one bundle (`Gang.one`)."""
        return self.gang if self.gang is not None else Gang.one(self.resources)


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
        bundle_nodes: the node of each bundle, in bundle order (a plain job's one node); ``None`` when it does not fit.
        unavailable: it was passed over for a mark on it (`PlacementRequest.unavailable`), not for its capacity.
    """

    cluster: str
    fits: bool
    reason: str = ""
    score: tuple[float, float] | None = None
    node_id: str | None = None
    accelerator: str | None = None
    too_large: bool = False
    bundle_nodes: tuple[str, ...] | None = None
    unavailable: bool = False


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
    gang = request.wanted
    total = gang.total
    options = []
    for cluster in clusters:
        if cluster.name in request.unavailable:
            options.append(Option(cluster.name, False, request.unavailable[cluster.name], unavailable=True))
            continue
        snapshot = snapshots.get(cluster.name)
        reason = _precheck(request, cluster, snapshot)
        if reason:
            options.append(Option(cluster.name, False, reason))
            continue
        assert snapshot is not None
        mine = [h for h in holds if h.cluster == cluster.name]
        options.append(_best_on(request.policy, gang, total, cluster, snapshot, mine, mix))
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
    policy: str,
    gang: Gang,
    total: Resources,
    cluster: Cluster,
    snap: ClusterSnapshot,
    holds: Sequence[Hold],
    mix: RequestMix | None,
) -> Option:
    """The best way to fit every bundle of ``gang`` at once on this cluster (a plain job: its one bundle), or why not.

    Each GPU model the gang allows is tried, by name; the lowest score wins, the first model among equals.
    ``total`` is ``gang.total``, summed once per decision.
    """
    models: list[str | None] = [*sorted(gang.accelerators)] or [None]
    free = effective_free(snap, holds)
    cluster_part = cluster_key(policy, cluster, total)
    best: Option | None = None
    fits_empty = False  # whether it would fit, with some model, were the nodes empty
    for model in models:
        if model is not None and ACCELERATOR_PREFIX + model not in snap.keys:
            continue
        fit = best_assignment(policy, free, snap.total, snap.keys, gang, model, mix=mix)
        if isinstance(fit, bool):
            fits_empty = fits_empty or fit
            continue
        score = (cluster_part, fit[1])
        if best is None or score < best.score:  # type: ignore[operator]
            nodes = tuple(snap.node_ids[r] for r in fit[0])
            best = Option(cluster.name, True, score=score, node_id=nodes[0], accelerator=model, bundle_nodes=nodes)
    if best is not None:
        return best
    why = _why_not(free if fits_empty else snap.total, snap, gang, models, busy=fits_empty)
    return Option(cluster.name, False, why, too_large=not fits_empty)


def _why_not(free: np.ndarray, snap: ClusterSnapshot, gang: Gang, models: Sequence[str | None], busy: bool) -> str:
    """Why the gang does not fit on ``free``: what is free now when ``busy``; else (too large) what no node has, or
    the nodes' totals. A gang of one bundle (a plain job) is told as that bundle on one node, without a strategy."""
    missing = "" if busy else _missing(snap, gang, models)
    if missing:
        return f"no node has {missing}"
    if len(gang.bundles) > 1:
        return f"{'busy' if busy else 'too large'}: {_why_gang_misses(free, snap, gang, models, busy)}"
    if not busy:
        return f"too large for every node (largest: {snap.largest_node()})"
    most = describe_node(dict(zip(snap.keys, free[int(np.argmax(free.sum(axis=1)))], strict=True)))
    return f"busy: no node has {gang.bundles[0].describe()} free now (most free: {most})"


def _missing(snap: ClusterSnapshot, gang: Gang, models: Sequence[str | None]) -> str:
    """What the gang asks for that no node of the cluster has, whichever of its GPU models it took, in the order
    ``describe`` uses; empty when with some model it lacks nothing."""
    lacks: list[list[str]] = []
    for model in models:
        if model is not None and ACCELERATOR_PREFIX + model not in snap.keys:
            lacks.append([f"a GPU of model {' or '.join(models)}"])  # type: ignore[arg-type]
        else:
            lacks.append([k for k in gang.total.to_ray(model) if k not in snap.keys])
    return ", ".join(dict.fromkeys(k for keys in lacks for k in keys)) if all(lacks) else ""


def _why_gang_misses(
    free: np.ndarray, snap: ClusterSnapshot, gang: Gang, models: Sequence[str | None], busy: bool
) -> str:
    """Why a gang of several bundles does not fit on ``free``, per its strategy (see `_why_not`)."""
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
