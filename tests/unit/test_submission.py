"""The typed request: a frozen `Submission`, stored in the ledger as versioned JSON and read back as itself."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rayfleet.dispatch import Submission
from rayfleet.dispatch.submission import REQUEST_VERSION
from rayfleet.errors import LedgerError
from rayfleet.ledger import Ledger
from rayfleet.resources import Gang, Resources


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def record(ledger: Ledger, sub: Submission, request: dict | None = None) -> Submission:
    ledger.add_job(
        "j1",
        entrypoint=sub.entrypoint,
        request=sub.to_json() if request is None else request,
        runtime_env=sub.runtime_env,
        metadata=sub.metadata,
        parent_id=sub.parent_id,
    )
    return Submission.from_job(ledger.job("j1"))


def test_a_submission_reads_back_from_the_ledger_as_itself(ledger):
    sub = Submission(
        entrypoint="python ddp.py",
        gang=Gang.of(2, {"gpu": 1}, strategy="STRICT_SPREAD"),
        runtime_env={"env_vars": {"A": "1"}},
        labels={"cloud": "gcp"},
        metadata={"team": "ml"},
        parent_id="rf-parent",
        start_timeout_s=7.5,
        queue=True,
        queue_deadline=1234.5,
        priority=3,
        owner="ada",
        max_retries=2,
        at_least_once=True,
        group={"id": "g1", "size": 2},
    )
    assert record(ledger, sub) == sub
    assert sub.to_json()["version"] == REQUEST_VERSION
    assert "entrypoint" not in sub.to_json()  # it has a column of its own


def test_a_request_recorded_before_versions_is_read(ledger):
    old = {
        "resources": {"cpu": 2},
        "labels": None,
        "cluster": None,
        "policy": "spread",
        "reservation_timeout_s": 9.0,
        "queue": True,
        "queue_deadline": None,
        "priority": 1,
        "owner": None,
        "max_retries": 1,
        "at_least_once": False,
    }
    sub = record(ledger, Submission(entrypoint="true"), request=old)
    assert (sub.resources, sub.policy, sub.start_timeout_s, sub.labels, sub.owner) == (
        Resources(cpu=2),
        "spread",
        9.0,
        {},
        "",
    )


def test_a_request_from_a_newer_rayfleet_is_refused_with_the_fix(ledger):
    with pytest.raises(LedgerError, match="newer rayfleet"):
        record(ledger, Submission(entrypoint="true"), request={"version": REQUEST_VERSION + 1})


def test_a_submission_is_frozen_and_checks_its_fields():
    sub = Submission(entrypoint="true")
    with pytest.raises(ValidationError):
        sub.priority = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Submission(entrypoint="true", max_retries=-1)
    with pytest.raises(ValidationError):
        Submission(entrypoint="true", surprise=1)  # type: ignore[call-arg]
