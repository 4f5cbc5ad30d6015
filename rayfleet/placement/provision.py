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


def _holder(template: ClusterTemplate, request: Resources) -> tuple[str | None, int, str | None] | None:
    """(group name or None for the head, workers needed, accelerator) of the cheapest way the template holds it."""
    head_cpus = template.head.ray_cpus if template.head.ray_cpus is not None else template.head.cpu
    head = {"CPU": head_cpus, "memory": float(template.head.memory)}
    if not request.gpu and not request.accelerators and request.fits(head):
        return None, 0, None
    for group in template.workers:
        if template.max_workers(group) > 0 and group.can_hold(request):
            return group.name, 1, group.accelerator if request.gpu else None
    return None


def _workers(template: ClusterTemplate, snap: ClusterSnapshot) -> tuple[int, int]:
    """(workers the cluster has or is launching, the template's maximum)."""
    launching = sum(int(n) for n in (snap.autoscaler.get("pending_launches") or {}).values())
    launching += len(snap.autoscaler.get("pending_nodes") or [])
    return max(0, len(snap.node_ids) - 1) + launching, sum(template.max_workers(g) for g in template.workers)


def headroom(
    request: Resources, managed: Mapping[str, ClusterTemplate], snapshots: Mapping[str, ClusterSnapshot]
) -> list[Headroom]:
    """For each managed autoscaling cluster: can its autoscaler add a worker that holds ``request``?"""
    out = []
    for name, template in sorted(managed.items()):
        if not template.autoscaled:
            continue
        snap = snapshots.get(name)
        if snap is None or not snap.healthy:
            out.append(Headroom(name, False, "no healthy reading"))
            continue
        groups = [g for g in template.workers if g.can_hold(request)]
        if not groups:
            out.append(Headroom(name, False, f"no worker group of template {template.name} can hold it"))
            continue
        workers, ceiling = _workers(template, snap)
        if workers >= ceiling:
            out.append(Headroom(name, False, f"at its maximum of {ceiling} workers"))
            continue
        model = groups[0].accelerator if request.gpu else None
        out.append(
            Headroom(name, True, f"its autoscaler can add a {groups[0].name} worker ({workers} of {ceiling})", model)
        )
    return out


def _capped(state: ProvisionerState, template: ClusterTemplate) -> str | None:
    """Why the provisioner may not create another cluster of ``template`` (its caps), or None."""
    if state.clusters >= state.max_clusters:
        return f"provisioner {state.name} is at its cap of {state.max_clusters} clusters"
    if state.gpus + template.total_gpus() > state.max_gpus:
        return f"would pass provisioner {state.name}'s cap of {state.max_gpus} GPUs ({state.gpus} in use)"
    return None


def creations(request: Resources, provisioners: Sequence[ProvisionerState]) -> list[Creation]:
    """Every template of every provisioner: can a new cluster hold ``request``, at what price? Best first."""
    out = []
    for state in provisioners:
        for template in state.templates:
            holder = _holder(template, request)
            if holder is None:
                out.append(Creation(state.name, template.name, False, "no worker (or head) of it can hold it"))
                continue
            if capped := _capped(state, template):
                out.append(Creation(state.name, template.name, False, capped))
                continue
            group, workers, model = holder
            where = f"a {group} worker" if group else "its head"
            price = template.hourly_price(request)
            out.append(
                Creation(state.name, template.name, True, f"{where} can hold it, {price:g}/h", price, workers, model)
            )
    return sorted(out, key=lambda c: (not c.fits, c.price, c.workers, c.provisioner, c.template))


# ----- gangs ------------------------------------------------------------------------------------------------------


def gang_workers(
    template: ClusterTemplate, gang: Gang, free_slots: Mapping[str, int] | None = None
) -> tuple[int, str | None] | str:
    """How a cluster of ``template`` holds every bundle of ``gang`` on workers it adds: (workers, GPU model), or the
    reason it cannot.

    Conservative: one bundle per new worker, which every strategy allows but STRICT_PACK of several bundles (it needs
    them on one node: refused here). All GPU bundles get workers of one GPU model, as placement requires.
    ``free_slots`` caps the workers each group may still add (default: its maximum).
    """
    if gang.strategy == "STRICT_PACK" and len(gang.bundles) > 1:
        return "a STRICT_PACK gang of several bundles needs one node for all: not planned on new workers"
    for bundle in gang.bundles:
        if not any(template.max_workers(g) > 0 and g.can_hold(bundle) for g in template.workers):
            return f"no worker group of template {template.name} can hold a bundle of {bundle.describe()}"
    slots = {g.name: template.max_workers(g) for g in template.workers} if free_slots is None else dict(free_slots)
    models = sorted({g.accelerator for g in template.workers if g.accelerator}) or [None]
    why = f"no worker group of template {template.name} can hold {gang.describe()}"
    for model in models if any(b.gpu for b in gang.bundles) else [None]:
        left = dict(slots)
        ok = True
        for bundle in sorted(gang.bundles, key=lambda b: (-b.gpu, -b.cpu)):
            group = next(
                (
                    g
                    for g in template.workers
                    if left.get(g.name, 0) > 0 and g.can_hold(bundle) and (not bundle.gpu or g.accelerator == model)
                ),
                None,
            )
            if group is None:
                ok = False
                why = f"template {template.name} cannot add a worker for every bundle of {gang.describe()}"
                break
            left[group.name] -= 1
        if ok:
            return len(gang.bundles), model
    return why


def gang_headroom(
    gang: Gang, managed: Mapping[str, ClusterTemplate], snapshots: Mapping[str, ClusterSnapshot]
) -> list[Headroom]:
    """For each managed autoscaling cluster: can its autoscaler add workers that hold every bundle of ``gang``?"""
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
        plan = gang_workers(template, gang)
        if isinstance(plan, str):
            out.append(Headroom(name, False, plan))
        elif plan[0] > spare:
            out.append(
                Headroom(name, False, f"needs {plan[0]} more workers, has room for {spare} ({workers} of {ceiling})")
            )
        else:
            out.append(
                Headroom(name, True, f"its autoscaler can add {plan[0]} workers ({workers} of {ceiling})", plan[1])
            )
    return out


def gang_creations(gang: Gang, provisioners: Sequence[ProvisionerState]) -> list[Creation]:
    """Every template of every provisioner: can a new cluster hold every bundle of ``gang``? Best first."""
    out = []
    for state in provisioners:
        for template in state.templates:
            plan = gang_workers(template, gang)
            if isinstance(plan, str):
                out.append(Creation(state.name, template.name, False, plan))
            elif capped := _capped(state, template):
                out.append(Creation(state.name, template.name, False, capped))
            else:
                price = sum(template.hourly_price(b) for b in gang.bundles)
                why = f"{plan[0]} new workers can hold {gang.describe()}, {price:g}/h"
                out.append(Creation(state.name, template.name, True, why, price, plan[0], plan[1]))
    return sorted(out, key=lambda c: (not c.fits, c.price, c.workers, c.provisioner, c.template))
