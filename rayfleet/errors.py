"""The one tree of rayfleet errors: each says what happened, to what, and what to do about it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RayfleetError(Exception):
    """Base of every error rayfleet raises on purpose.

    Attributes:
        message: what happened, to what.
        hint: what to do about it (rendered as ``To fix: ...``).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message}\nTo fix: {self.hint}" if self.hint else self.message


class InvalidRequestError(RayfleetError, ValueError):
    """A request is malformed: a bad resource value or key, an empty entrypoint, a bad selector."""


class InvalidResourcesError(InvalidRequestError):
    """A resource value or key is invalid (negative, NaN, malformed key, fractional GPU above 1)."""


class ConfigError(RayfleetError, ValueError):
    """A fleet definition (YAML file or Python objects) is invalid.

    Attributes:
        source: the file the error is in, or ``None`` for Python objects.
        key: the dotted path of the offending key, when known (None when there are several problems).
        problems: every problem found, as (key, problem, fix).
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        source: str | None = None,
        key: str | None = None,
        problems: list[tuple[str, str, str]] | None = None,
    ):
        self.source = source
        self.key = key
        self.problem = message  # without the file and key
        # every problem found at once, as (key, problem, fix): one for most errors, several from a definition
        self.problems = problems if problems is not None else [(key or "", message, hint)]
        where = ", ".join(p for p in (source, f"key {key!r}" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message, hint)


class UnknownClusterError(InvalidRequestError):
    """A job was pinned to a cluster name the fleet does not have."""


class NoCapacityError(RayfleetError):
    """No cluster in the fleet can take a request.

    Attributes:
        rejects: cluster name -> the reason it was rejected.
        largest_nodes: cluster name -> a description of its largest node, when it was probed.
        history: earlier attempts (cluster, reason) for a job that failed over; empty on a first placement.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        rejects: Mapping[str, str] | None = None,
        largest_nodes: Mapping[str, str] | None = None,
        history: Sequence[tuple[str, str]] = (),
        never_fits: bool = False,
    ) -> None:
        self.never_fits = never_fits  # larger than any node and any template: waiting in a queue would not help
        self.rejects = dict(rejects or {})
        self.largest_nodes = dict(largest_nodes or {})
        self.history = list(history)
        lines = [message]
        lines += [f"  - {name}: {why}" for name, why in sorted(self.rejects.items())]
        lines += [f"  earlier attempt on {c}: {why}" for c, why in self.history]
        super().__init__("\n".join(lines), hint)


class ClusterError(RayfleetError):
    """A cluster answered, but with an error (Ray's job API returned a failure).

    Attributes:
        cluster: the cluster's name.
        status: the HTTP status, when there was one.
    """

    def __init__(self, message: str, hint: str = "", *, cluster: str, status: int | None = None) -> None:
        self.cluster = cluster
        self.status = status
        super().__init__(message, hint)


class AuthenticationError(ClusterError):
    """A cluster refused rayfleet's credentials (HTTP 401 or 403): its token or headers are missing or wrong."""


class ClusterUnreachableError(ClusterError):
    """A cluster did not answer (connection refused, timed out, DNS failure)."""


class DuplicateSubmissionError(ClusterError):
    """Ray already has a job with this submission id (a retry after a lost response)."""


class AttemptFencedError(ClusterError):
    """The submission id was taken on the cluster by a no-op job another dispatcher submitted under it (a fence): this
    attempt never runs; the job was placed again by whoever fenced it."""


class JobNotFoundError(RayfleetError, KeyError):
    """No job with this id in the ledger (or on the cluster)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return RayfleetError.__str__(self)


class LedgerError(RayfleetError):
    """The ledger cannot be opened or is inconsistent (bad path, newer schema, illegal transition)."""


class LeaseLostError(LedgerError):
    """This process no longer holds the lease it acted under: another dispatcher took the loop over (this one was
    paused or cut off past the lease's expiry). Its write was refused, and it must stop acting."""


class LocalFleetError(RayfleetError):
    """An embedded local fleet could not start, or its state file is unusable."""


class PortInUseError(LocalFleetError):
    """A port a local cluster needs is already taken by another process."""


class ProvisioningError(RayfleetError):
    """An on-demand cluster could not be created or did not become ready (it was deleted, nothing is left behind).

    Attributes:
        provisioner: the provisioner's name.
        cluster: the cluster's name, when one was created.
        status: the HTTP status from the infrastructure's API, when there was one.
        abandoned: the creation stopped because its creator did (crashed), not because of the cluster or its
            template: the same template may be tried again at once.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        provisioner: str,
        cluster: str | None = None,
        status: int | None = None,
        abandoned: bool = False,
    ) -> None:
        self.provisioner = provisioner
        self.cluster = cluster
        self.status = status
        self.abandoned = abandoned
        super().__init__(message, hint)


class InsecureAddressWarning(UserWarning):
    """A cluster's dashboard is reached over plain HTTP on a network (not loopback): requests and headers are readable
    by anyone on the path."""


class PipelineError(RayfleetError):
    """A pipeline could not run as asked (the base of the pipeline errors)."""


class InvalidPipelineError(PipelineError, InvalidRequestError):
    """A pipeline or one of its stages is malformed: a duplicate or bad name, an unknown dependency, a cycle.

    Attributes:
        stage: the stage the error is about, when there is one.
    """

    def __init__(self, message: str, hint: str = "", *, stage: str | None = None) -> None:
        self.stage = stage
        super().__init__(message, hint)


class StageFailedError(PipelineError):
    """A stage of a pipeline failed (or could not be placed), so the stages that depend on it never started.

    Attributes:
        stage: the stage that failed.
        reason: why, as its cluster or the fleet said.
        stopped: the stages that were not started because of it.
    """

    def __init__(self, message: str, hint: str = "", *, stage: str, reason: str, stopped: Sequence[str] = ()) -> None:
        self.stage = stage
        self.reason = reason
        self.stopped = list(stopped)
        super().__init__(message, hint)


class LogsUnavailableError(RayfleetError):
    """A job's log cannot be shown: it never ran anywhere (never placed, never submitted), or it ran where its log is
    gone (a lost cluster, before any of it was saved). The message says which, and what exists instead."""
