"""The bad-input catalogue's requests against real Ray clusters (issue 7, part 4): each is refused with a typed error
and a hint, no cluster gains a job (their job lists, read through Ray's API, are the same before and after), and the
ledger's rows are unchanged. The cases are those of tests/unit/test_bad_input.py that go through `Fleet.submit`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from rayfleet import Fleet
from rayfleet.backends.ray_jobs import RayJobs
from tests.unit.test_bad_input import CASES, Case, _param, ledger_rows

pytestmark = pytest.mark.integration

SUBMITTED = [c for c in CASES if c.area in ("resources", "gang", "entrypoint", "runtime_env", "request")]
SUBMITTED = [c for c in SUBMITTED if not c.id.startswith("python-") and c.id != "zero-bundles"]


def job_ids(fleet: Fleet) -> dict[str, set[str]]:
    """Every submission id each cluster has, as Ray lists them."""
    return {c.name: {j.submission_id for j in RayJobs(c).list()} for c in fleet.clusters}


def test_the_live_catalogue_covers_every_request_area() -> None:
    assert len(SUBMITTED) >= 25
    assert {c.area for c in SUBMITTED} == {"resources", "gang", "entrypoint", "runtime_env", "request"}


@pytest.mark.parametrize("case", [_param(c) for c in SUBMITTED])
def test_bad_input_submits_nothing_to_a_real_cluster_and_leaves_the_ledger_as_it_was(
    fleet: Fleet, ledger_path: Path, case: Case
) -> None:
    rows = ledger_rows(ledger_path)
    on_ray = job_ids(fleet)

    with pytest.raises(case.error) as caught:
        case.run(SimpleNamespace(fleet=fleet))

    assert case.says in str(caught.value)
    assert caught.value.hint
    assert job_ids(fleet) == on_ray
    assert ledger_rows(ledger_path) == rows


def test_the_job_list_comparison_sees_a_submission(fleet: Fleet, ledger_path: Path) -> None:
    """The checks above can fail: a valid request adds a job on a cluster and rows to the ledger."""
    rows = ledger_rows(ledger_path)
    on_ray = job_ids(fleet)

    handle = fleet.submit("true", {"cpu": 0.5})

    assert job_ids(fleet)[handle.cluster] == on_ray[handle.cluster] | {handle.submission_id}
    assert ledger_rows(ledger_path) != rows
    handle.wait(timeout=120)
