"""Every statement the ledger runs, built once with named parameters (``:name``) bound at execution.

Building a SQLAlchemy statement costs more than running it on SQLite (about 0.1 ms against 0.02 ms here), so the
ledger never builds one per call: it executes these with a dict of values, and SQLAlchemy compiles each only once.
SQLAlchemy's constructs are generative (a query made from one is a new object), so each is a constant.
"""

from __future__ import annotations

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.dialects.sqlite import insert as upsert

from rayfleet.schema import (
    attempts,
    cluster_marks,
    jobs,
    leases,
    managed_clusters,
    reservations,
    saved_logs,
    transitions,
)
from rayfleet.states import TERMINAL, JobState

# the states in which an attempt may hold resources its cluster's probes do not show yet
HOLDING_STATES = (JobState.PLACED, JobState.SUBMITTED, JobState.STARTING, JobState.RUNNING)
LIVE_MANAGED = ("CREATING", "READY")  # the states of a managed cluster that exists or is being made

_latest = transitions.alias("latest")  # the newest of some transitions
_own = transitions.alias("own")  # a job's own newest transition (QUEUED, PROVISIONING, a verdict)

# on a join of attempts and transitions: the transition is the attempt's newest
_newest = transitions.c.seq == (
    select(func.max(_latest.c.seq)).where(_latest.c.submission_id == attempts.c.submission_id).scalar_subquery()
)
attempts_now = attempts.join(transitions, _newest)  # each attempt with its state now
_attempts_ever = attempts.outerjoin(transitions, _newest)  # and those without a state yet

# ----- leases ---------------------------------------------------------------------------------------------------------

lease = select(leases.c.holder, leases.c.epoch, leases.c.expires_at).where(leases.c.name == bindparam("lease"))
_put_lease = upsert(leases)  # executed with every column's value
put_lease = _put_lease.on_conflict_do_update(
    index_elements=["name"], set_={c: _put_lease.excluded[c] for c in ("holder", "epoch", "expires_at")}
)
renew_lease = update(leases).where(leases.c.name == bindparam("lease"))  # executed with expires_at
release_lease = update(leases).where(  # executed with expires_at
    (leases.c.name == bindparam("lease"))
    & (leases.c.holder == bindparam("lease_holder"))
    & (leases.c.epoch == bindparam("lease_epoch"))
)

# ----- jobs, attempts, transitions ----------------------------------------------------------------------------------

add_job = insert(jobs)
add_attempt = insert(attempts)
add_transition = insert(transitions)
job_exists = select(jobs.c.id).where(jobs.c.id == bindparam("job_id"))
own_state = (  # a job's own newest state
    select(transitions.c.state, transitions.c.seq)
    .where((transitions.c.job_id == bindparam("job_id")) & transitions.c.submission_id.is_(None))
    .order_by(transitions.c.seq.desc())
    .limit(1)
)
newest_attempt = (  # a job's newest attempt and its state now
    select(attempts.c.n, transitions.c.state, transitions.c.seq)
    .select_from(attempts_now)
    .where(attempts.c.job_id == bindparam("job_id"))
    .order_by(attempts.c.n.desc())
    .limit(1)
)
attempt_state = (
    select(attempts.c.job_id, transitions.c.state)
    .select_from(_attempts_ever)
    .where(attempts.c.submission_id == bindparam("submission_id"))
)
_renewed = bindparam("now") + attempts.c.hold_window_s
renew_hold = (  # each step of an attempt's start renews the bound of its hold
    update(attempts)
    .where((attempts.c.submission_id == bindparam("sid")) & attempts.c.hold_window_s.is_not(None))
    .values(hold_until=case((attempts.c.hold_until > _renewed, attempts.c.hold_until), else_=_renewed))
)
# every state a job went through, its own and its attempts', in order (``rayfleet job``)
timeline = (
    select(transitions.c.at, transitions.c.state, attempts.c.n, transitions.c.cluster, transitions.c.detail)
    .add_columns(attempts.c.cluster.label("attempt_cluster"))
    .select_from(transitions.outerjoin(attempts, attempts.c.submission_id == transitions.c.submission_id))
    .where(transitions.c.job_id == bindparam("job_id"))
    .order_by(transitions.c.seq)
)
history = (
    select(transitions.c.state, transitions.c.at, transitions.c.detail)
    .where(transitions.c.submission_id == bindparam("submission_id"))
    .order_by(transitions.c.seq)
)
holding = (
    select(attempts.c.submission_id, attempts.c.cluster, attempts.c.bundles, attempts.c.hold_until)
    .add_columns(transitions.c.state, transitions.c.at, reservations.c.reserved_at, reservations.c.nodes)
    .select_from(attempts_now.outerjoin(reservations, reservations.c.submission_id == attempts.c.submission_id))
    .where((attempts.c.hold_until > bindparam("now")) & transitions.c.state.in_([s.value for s in HOLDING_STATES]))
)

# ----- loading jobs: each with its own newest state, then their attempts ---------------------------------------------

_jobs = select(jobs, _own.c.seq, _own.c.state, _own.c.cluster, _own.c.detail).select_from(
    jobs.outerjoin(
        _own,
        _own.c.seq
        == select(func.max(_latest.c.seq))
        .where((_latest.c.job_id == jobs.c.id) & _latest.c.submission_id.is_(None))
        .scalar_subquery(),
    )
)
job = _jobs.where(jobs.c.id == bindparam("job_id"))
newest_jobs = _jobs.order_by(jobs.c.created_at.desc()).limit(bindparam("limit"))
jobs_on = _jobs.where(jobs.c.id.in_(select(attempts.c.job_id).where(attempts.c.cluster == bindparam("cluster"))))
jobs_whose_own_state = _jobs.where(_own.c.state == bindparam("state")).order_by(jobs.c.created_at)
children = _jobs.where(jobs.c.parent_id == bindparam("parent_id")).order_by(jobs.c.created_at)
active_jobs = _jobs.where(
    jobs.c.id.in_(
        select(attempts.c.job_id)
        .select_from(attempts_now)
        .where(transitions.c.state.not_in([s.value for s in TERMINAL]))
    )
).order_by(jobs.c.created_at)
attempts_of = (
    select(attempts.c.submission_id, attempts.c.job_id, attempts.c.n, attempts.c.cluster, attempts.c.node_id)
    .add_columns(attempts.c.accelerator, attempts.c.created_at, transitions.c.state, transitions.c.at)
    .add_columns(transitions.c.detail, attempts.c.session, transitions.c.seq, reservations.c.reserved_at)
    .select_from(attempts_now.outerjoin(reservations, reservations.c.submission_id == attempts.c.submission_id))
    .where(attempts.c.job_id.in_(bindparam("job_ids", expanding=True)))
    .order_by(attempts.c.n)
)

# ----- managed clusters, saved logs, reservations -------------------------------------------------------------------

managed_state = select(managed_clusters.c.state).where(managed_clusters.c.name == bindparam("name"))
live_managed_count = (
    select(func.count())
    .select_from(managed_clusters)
    .where((managed_clusters.c.provisioner == bindparam("provisioner")) & managed_clusters.c.state.in_(LIVE_MANAGED))
)
add_managed = insert(managed_clusters)
all_managed = select(managed_clusters).order_by(managed_clusters.c.created_at)
live_managed = all_managed.where(managed_clusters.c.state.in_(LIVE_MANAGED))
_save_logs = upsert(saved_logs)  # executed with every column's value
save_logs = _save_logs.on_conflict_do_update(
    index_elements=["submission_id"], set_={c: _save_logs.excluded[c] for c in ("saved_at", "logs", "final")}
)
saved_logs_of = select(saved_logs.c.logs, saved_logs.c.saved_at, saved_logs.c.final).where(
    saved_logs.c.submission_id == bindparam("submission_id")
)
_put_mark = upsert(cluster_marks)  # executed with every column's value
put_mark = _put_mark.on_conflict_do_update(
    index_elements=["cluster", "kind"], set_={c: _put_mark.excluded[c] for c in ("at", "by", "reason", "session")}
)
drop_mark = cluster_marks.delete().where(
    (cluster_marks.c.cluster == bindparam("cluster")) & cluster_marks.c.kind.in_(bindparam("kinds", expanding=True))
)
all_marks = select(cluster_marks).order_by(cluster_marks.c.cluster, cluster_marks.c.kind)
add_reservation = upsert(reservations).on_conflict_do_nothing()  # the first report only
