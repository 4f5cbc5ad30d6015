"""What to do when nothing fits now (pure): use an autoscaler's headroom, else create a cluster from a template.

Order of preference: free capacity now (`place`), then headroom on a managed autoscaling cluster (its template's
maximum minus the workers it has or is launching), then a new cluster from the cheapest template that can hold the
request with the fewest workers, within each provisioner's caps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rayfleet.capacity import ClusterSnapshot
from rayfleet.resources import Gang, Resources
from rayfleet.templates import ClusterTemplate


@dataclass(frozen=True)
class Headroom:
    """An existing managed cluster whose autoscaler can add a worker that holds the request."""

    cluster: str
    fits: bool
    reason: str
    accelerator: str | None = None


@dataclass(frozen=True)
class Creation:
    """A new cluster from a template of a provisioner."""

    provisioner: str
    template: str
    fits: bool
    reason: str
    price: float = 0.0
    workers: int = 0
    accelerator: str | None = None


@dataclass(frozen=True)
class ProvisionerState:
    """A provisioner's templates and how much of its caps its live clusters use."""

    name: str
    templates: Sequence[ClusterTemplate]
    max_clusters: int
    max_gpus: int
    clusters: int = 0
    gpus: int = 0


Wanted = Resources | Gang  # a plain job is one bundle (STRICT_PACK), a gang its bundles: one path for both


def _bundles(wanted: Wanted) -> tuple[tuple[Resources, ...], str]:
    gang = wanted if isinstance(wanted, Gang) else Gang.one(wanted)
    return gang.bundles, gang.strategy


def _on_head(template: ClusterTemplate, wanted: Wanted) -> bool:
    """Whether the template's head alone holds it: one bundle that needs no GPU and fits the head's CPUs and memory."""
    bundles, _ = _bundles(wanted)
    if len(bundles) != 1 or bundles[0].gpu or bundles[0].accelerators:
        return False
    head_cpus = template.head.ray_cpus if template.head.ray_cpus is not None else template.head.cpu
    return bundles[0].fits({"CPU": head_cpus, "memory": float(template.head.memory)})


def _workers(template: ClusterTemplate, snap: ClusterSnapshot) -> tuple[int, int]:
    """(workers the cluster has or is launching, the template's maximum)."""
    launching = sum(int(n) for n in (snap.autoscaler.get("pending_launches") or {}).values())
    launching += len(snap.autoscaler.get("pending_nodes") or [])
    return max(0, len(snap.node_ids) - 1) + launching, sum(template.max_workers(g) for g in template.workers)


def workers_for(
    template: ClusterTemplate, wanted: Wanted, free_slots: Mapping[str, int] | None = None
) -> tuple[int, str | None, tuple[str, ...]] | str:
    """How a cluster of ``template`` holds ``wanted`` (a plain job's one bundle, or every bundle of a gang) on workers
    it adds: (workers, GPU model, the worker group of each), or the reason it cannot.

    Conservative: one bundle per new worker, which every strategy allows but STRICT_PACK of several bundles (it needs
    them on one node: refused here). All GPU bundles get workers of one GPU model, as placement requires; the
    models are tried in the order of the template's groups that hold the largest bundle. ``free_slots`` caps the
    workers each group may still add (default: its maximum).
    """
    bundles, strategy = _bundles(wanted)
    if strategy == "STRICT_PACK" and len(bundles) > 1:
        return "a STRICT_PACK gang of several bundles needs one node for all: not planned on new workers"
    for bundle in bundles:
        if not any(template.max_workers(g) > 0 and g.can_hold(bundle) for g in template.workers):
            what = "it" if len(bundles) == 1 else f"a bundle of {bundle.describe()}"
            return f"no worker group of template {template.name} can hold {what}"
    slots = {g.name: template.max_workers(g) for g in template.workers} if free_slots is None else dict(free_slots)
    order = sorted(bundles, key=lambda b: (-b.gpu, -b.cpu))
    gpu = any(b.gpu for b in bundles)
    models = list(dict.fromkeys(g.accelerator for g in template.workers if g.accelerator and g.can_hold(order[0])))
    for model in models if gpu and models else [None]:
        left, groups = dict(slots), []
        for bundle in order:
            group = next(
                (
                    g
                    for g in template.workers
                    if left.get(g.name, 0) > 0 and g.can_hold(bundle) and (not bundle.gpu or g.accelerator == model)
                ),
                None,
            )
            if group is None:
                break
            left[group.name] -= 1
            groups.append(group.name)
        else:
            return len(bundles), model, tuple(groups)
    return f"template {template.name} cannot add a worker for every bundle of {wanted.describe()}"


def _adds(groups: tuple[str, ...]) -> str:
    return f"a {groups[0]} worker" if len(groups) == 1 else f"{len(groups)} workers"


def headroom(
    wanted: Wanted, managed: Mapping[str, ClusterTemplate], snapshots: Mapping[str, ClusterSnapshot]
) -> list[Headroom]:
    """For each managed autoscaling cluster: can its autoscaler add workers that hold ``wanted`` (a plain job, or
    every bundle of a gang at once)?"""
    out = []
    for name, template in sorted(managed.items()):
        if not template.autoscaled:
            continue
        snap = snapshots.get(name)
        if snap is None or not snap.healthy:
            out.append(Headroom(name, False, "no healthy reading"))
            continue
        workers, ceiling = _workers(template, snap)
        spare = ceiling - workers
        # which groups the spare slots belong to is not in the reading: allow each group its maximum, bounded by
        # the cluster's spare total below
        plan = workers_for(template, wanted)
        if isinstance(plan, str):
            out.append(Headroom(name, False, plan))
        elif spare <= 0:
            out.append(Headroom(name, False, f"at its maximum of {ceiling} workers"))
        elif plan[0] > spare:
            why = f"needs {plan[0]} more workers, has room for {spare} ({workers} of {ceiling})"
            out.append(Headroom(name, False, why))
        else:
            why = f"its autoscaler can add {_adds(plan[2])} ({workers} of {ceiling})"
            out.append(Headroom(name, True, why, plan[1]))
    return out


def _capped(state: ProvisionerState, template: ClusterTemplate) -> str | None:
    """Why the provisioner may not create another cluster of ``template`` (its caps), or None."""
    if state.clusters >= state.max_clusters:
        return f"provisioner {state.name} is at its cap of {state.max_clusters} clusters"
    if state.gpus + template.total_gpus() > state.max_gpus:
        return f"would pass provisioner {state.name}'s cap of {state.max_gpus} GPUs ({state.gpus} in use)"
    return None


def creations(wanted: Wanted, provisioners: Sequence[ProvisionerState]) -> list[Creation]:
    """Every template of every provisioner: can a new cluster hold ``wanted`` (a plain job on its head or a worker,
    or every bundle of a gang on workers), at what price? Best first."""
    bundles, _ = _bundles(wanted)
    out = []
    for state in provisioners:
        for template in state.templates:
            plan: tuple[int, str | None, tuple[str, ...]] | str = (
                (0, None, ()) if _on_head(template, wanted) else workers_for(template, wanted)
            )
            if isinstance(plan, str):
                out.append(Creation(state.name, template.name, False, plan))
                continue
            if capped := _capped(state, template):
                out.append(Creation(state.name, template.name, False, capped))
                continue
            workers, model, groups = plan
            price = sum(template.hourly_price(b) for b in bundles)
            where = "its head" if not groups else _adds(groups) if len(groups) == 1 else f"{len(groups)} new workers"
            what = "it" if len(bundles) == 1 else wanted.describe()
            why = f"{where} can hold {what}, {price:g}/h"
            out.append(Creation(state.name, template.name, True, why, price, workers, model))
    return sorted(out, key=lambda c: (not c.fits, c.price, c.workers, c.provisioner, c.template))
