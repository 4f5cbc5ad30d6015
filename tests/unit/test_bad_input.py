"""The bad-input catalogue (issue 7, part 4): every case gets a typed error with a hint, and leaves no side effect.

Each case runs against a fleet whose static cluster and whose KubeRay API server are *tripwires*: loopback sockets
that count every connection (and keep the first line of what was sent). "No side effect" means, after the case:

- no connection reached either tripwire (the failure happened before any network: nothing submitted, no cluster
  created), or, for the few cases that read capacity first, no request but GETs and none to the Kubernetes API;
- every row of every table of the ledger is as it was (a job was seeded first, so the tables are not empty);
- the files of the test directory are as they were (no ledger or state file appeared).

The same requests against real Ray clusters, listing their jobs before and after, are in
tests/integration/test_bad_input_live.py. Cases that still fail the contract are marked xfail(strict) with the fix
they need (in files owned by other work); see docs/reliability.md.
"""

# ruff: noqa: E501 - the catalogue is a table: one case per line reads better than wrapped calls

from __future__ import annotations

import math
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rayfleet import (
    Cluster,
    ConfigError,
    Fleet,
    FleetConfig,
    Gang,
    InvalidRequestError,
    InvalidResourcesError,
    LedgerError,
    RayfleetError,
    Resources,
    UnknownClusterError,
)
from rayfleet.cli import EXIT_USAGE, app
from rayfleet.ledger import Ledger

SECRET = "s3cret-value-9f2c"  # must never be echoed by an error about the value that holds it


# ----- the tripwire ---------------------------------------------------------------------------------------------


class Tripwire:
    """A loopback TCP listener that records every connection and the first line sent on it, then hangs up."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(1.0)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError:
                    first = ""
                self.lines.append(first or "<nothing sent>")

    def close(self) -> None:
        self._closed = True
        self._server.close()


# ----- the environment of one case ------------------------------------------------------------------------------


@dataclass
class Env:
    tmp: Path
    ray: Tripwire
    k8s: Tripwire
    fleet_file: Path
    ledger_path: Path
    _fleet: Fleet | None = field(default=None, repr=False)

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet.from_file(self.fleet_file, ledger=self.ledger_path)
        return self._fleet

    def file(self, text: str, name: str = "bad.yaml") -> Path:
        path = self.tmp / "cases" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    def fleet_yaml(self, **top: Any) -> str:
        """A valid fleet file's text with some top-level keys replaced or added."""
        data = yaml.safe_load(self.fleet_file.read_text())
        data.update(top)
        return yaml.safe_dump(data)

    def cluster_yaml(self, **fields: Any) -> str:
        """A fleet file whose one cluster has ``fields`` replaced or added."""
        data = yaml.safe_load(self.fleet_file.read_text())
        data["clusters"][0].update(fields)
        return yaml.safe_dump(data)

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(app, [*args], env={"COLUMNS": "200"})


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.delenv("RF_UNSET_VARIABLE", raising=False)
    ray, k8s = Tripwire(), Tripwire()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": k8s.url}}],
                "users": [{"name": "t", "user": {"token": SECRET}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    template = {"name": "cpu", "head": {"cpu": 1, "memory": "1GiB"}, "workers": [{"name": "w", "cpu": 4}]}
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        yaml.safe_dump(
            {
                "name": "catalogue",
                "clusters": [{"name": "only", "address": ray.url, "labels": {"kind": "cpu"}}],
                "provisioners": [
                    {
                        "name": "k8s",
                        "kind": "kuberay",
                        "kubeconfig": str(kubeconfig),
                        "templates": [template],
                        "request_timeout_s": 0.5,
                    }
                ],
            }
        )
    )
    ledger_path = tmp_path / "ledger.db"
    seed = Ledger(ledger_path)
    seed.add_job("rf-5eed5eed5eed", entrypoint="true", request={"resources": {"cpu": 1.0}})
    seed.close()
    e = Env(tmp_path, ray, k8s, fleet_file, ledger_path)
    yield e
    if e._fleet is not None:
        e._fleet.close()
    ray.close()
    k8s.close()


def ledger_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "cases" not in p.parts and "-wal" not in p.name}


# ----- the catalogue --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input. ``run`` raises the typed error (or, for a CLI case, returns the CLI's result)."""

    area: str
    id: str
    error: type[RayfleetError]
    says: str
    run: Callable[[Env], Any]
    probes: bool = False  # reads capacity before it fails (GETs to the cluster only)
    cli: bool = False
    xfail: str | None = None


def submit(resources: Any = None, entrypoint: Any = "true", **kwargs: Any) -> Callable[[Env], Any]:
    return lambda env: env.fleet.submit(entrypoint, resources, **kwargs)


def load(text: Callable[[Env], str]) -> Callable[[Env], Any]:
    return lambda env: FleetConfig.from_file(env.file(text(env)))


def cluster(**fields: Any) -> Callable[[Env], Any]:
    return lambda env: Cluster(**{"name": "a", "address": "http://127.0.0.1:8265", **fields})


def fleet_with(**top: Any) -> Callable[[Env], Any]:
    return lambda env: Fleet.from_file(env.file(env.fleet_yaml(**top)), ledger=env.ledger_path)


def with_cluster(**fields: Any) -> Callable[[Env], Any]:
    return lambda env: Fleet.from_file(env.file(env.cluster_yaml(**fields)), ledger=env.ledger_path)


def with_provisioner(**fields: Any) -> Callable[[Env], Any]:
    def run(env: Env) -> Any:
        data = yaml.safe_load(env.fleet_file.read_text())
        data["provisioners"][0].update(fields)
        return Fleet.from_file(env.file(yaml.safe_dump(data)), ledger=env.ledger_path)

    return run


def cli(*args: str) -> Callable[[Env], Any]:
    return lambda env: env.cli(*[a.format(fleet=env.fleet_file, ledger=env.ledger_path) for a in args])


def ledger_at(path: Callable[[Env], Path]) -> Callable[[Env], Any]:
    return lambda env: Fleet.from_file(env.fleet_file, ledger=path(env))


def not_a_database(env: Env) -> Path:
    path = env.tmp / "cases" / "notes.db"
    path.parent.mkdir(exist_ok=True)
    path.write_text("my notes, not a database\n")
    return path


def under_a_file(env: Env) -> Path:
    path = env.tmp / "cases" / "plain-file"
    path.parent.mkdir(exist_ok=True)
    path.write_text("x")
    return path / "ledger.db"


def a_directory(env: Env) -> Path:
    path = env.tmp / "cases" / "a-directory"
    path.mkdir(parents=True, exist_ok=True)
    return path


GPU_ANY = {"gpu": 1}
GPU_A100 = {"gpu": 1, "accelerators": ["A100"]}
F = "--fleet={fleet}"
L = "--ledger={ledger}"

CASES = [
    # --- the config file -------------------------------------------------------------------------------------------
    Case("config", "malformed-yaml", ConfigError, "malformed YAML at line", load(lambda e: "clusters: [\n  - {name: a")),
    Case("config", "not-a-mapping", ConfigError, "must be a mapping", load(lambda e: "- a\n- b\n")),
    Case("config", "unknown-key", ConfigError, "polcy", load(lambda e: e.fleet_yaml(polcy="spread"))),
    Case("config", "unknown-policy", ConfigError, "Input should be 'binpack'", load(lambda e: e.fleet_yaml(policy="random"))),
    Case("config", "no-clusters", ConfigError, "no clusters", load(lambda e: e.fleet_yaml(clusters=[], provisioners=[]))),
    Case("config", "duplicate-cluster", ConfigError, "appears twice", load(lambda e: e.fleet_yaml(clusters=[{"name": "a", "address": "h:1"}] * 2))),
    Case("config", "missing-address", ConfigError, "address", load(lambda e: e.fleet_yaml(clusters=[{"name": "a"}]))),
    Case("config", "unset-variable", ConfigError, "RF_UNSET_VARIABLE", load(lambda e: e.fleet_file.read_text().replace("kind: cpu", "kind: ${RF_UNSET_VARIABLE}"))),
    Case("config", "negative-probe-timeout", ConfigError, "greater than 0", load(lambda e: e.fleet_yaml(probe_timeout_s=-1))),
    Case("config", "infinite-hold", ConfigError, "finite", load(lambda e: e.fleet_yaml(hold_ttl_s=math.inf))),
    Case("config", "zero-lease", ConfigError, "lease_ttl_s", load(lambda e: e.fleet_yaml(lease_ttl_s=0))),
    Case("config", "nan-price", ConfigError, "finite", load(lambda e: e.cluster_yaml(cost_per_gpu_hour=math.nan))),
    Case("config", "fleet-name-not-a-label", ConfigError, "fleet name", load(lambda e: e.fleet_yaml(name="ml prod!"))),
    Case("config", "duplicate-provisioner", ConfigError, "provisioner name 'k8s' appears twice", load(lambda e: e.fleet_yaml(provisioners=[{"name": "k8s"}, {"name": "k8s"}]))),
    Case("config", "unknown-provisioner-kind", ConfigError, "'ec2'", load(lambda e: e.fleet_yaml(provisioners=[{"name": "p", "kind": "ec2"}]))),
    Case("config", "url-template-missing", ConfigError, "needs url_template", with_provisioner(access="url_template")),
    Case("config", "url-template-placeholder", ConfigError, "does not expand", with_provisioner(access="url_template", url_template="https://{cluster}.example.com")),
    Case("config", "missing-file", ConfigError, "cannot read the fleet file", lambda e: FleetConfig.from_file(e.tmp / "cases" / "absent.yaml")),
    # --- addresses -------------------------------------------------------------------------------------------------
    Case("address", "ftp", ConfigError, "is not a dashboard URL", with_cluster(address="ftp://h:21")),
    Case("address", "credentials-in-url", ConfigError, "carries credentials", with_cluster(address=f"http://admin:{SECRET}@h:8265")),
    Case("address", "space-in-host", ConfigError, "whitespace", with_cluster(address="http://ray head:8265")),
    Case("address", "query-string", ConfigError, "query", with_cluster(address="http://h:8265/?token=x")),
    Case("address", "port-zero", ConfigError, "malformed port", with_cluster(address="http://h:0")),
    Case("address", "port-out-of-range", ConfigError, "malformed port", with_cluster(address="http://h:70000")),
    Case("address", "python-bad-name", ConfigError, "cluster name", cluster(name="GPU")),
    # --- auth headers ----------------------------------------------------------------------------------------------
    Case("headers", "header-injection", ConfigError, "line break", with_cluster(headers={"Authorization": f"Bearer {SECRET}\r\nX-Admin: 1"})),
    Case("headers", "header-name-with-space", ConfigError, "not a valid HTTP header name", with_cluster(headers={"Auth Token": SECRET})),
    Case("headers", "header-value-not-text", ConfigError, "valid string", cluster(headers={"X-Token": 12345})),
    Case("headers", "header-variable-unset", ConfigError, "RF_UNSET_VARIABLE", with_cluster(headers={"Authorization": "Bearer ${RF_UNSET_VARIABLE}"})),
    Case("headers", "verify-tls-quoted-false", ConfigError, "verify_tls 'false'", with_cluster(verify_tls="false")),
    Case("headers", "verify-tls-missing-ca", ConfigError, "existing CA bundle", with_cluster(verify_tls="/nonexistent/ca.pem")),
    # --- resources -------------------------------------------------------------------------------------------------
    Case("resources", "negative-cpu", InvalidResourcesError, "must be >= 0", submit({"cpu": -1})),
    Case("resources", "nan-cpu", InvalidResourcesError, "finite", submit({"cpu": math.nan})),
    Case("resources", "infinite-custom", InvalidResourcesError, "finite", submit({"custom": {"TPU": math.inf}})),
    Case("resources", "fractional-gpu-above-1", InvalidResourcesError, "fractional above 1", submit({"gpu": 1.5})),
    Case("resources", "memory-unit", InvalidResourcesError, "not a recognised amount", submit({"memory": "4XB"})),
    Case("resources", "memory-bool", InvalidResourcesError, "not an amount", submit({"memory": True})),
    Case("resources", "cpu-as-text", InvalidResourcesError, "not a number", submit({"cpu": "2"})),
    Case("resources", "malformed-key", InvalidResourcesError, "malformed", submit({"custom": {"bad key!": 1}})),
    Case("resources", "reserved-key", InvalidResourcesError, "has its own field", submit({"custom": {"CPU": 1}})),
    Case("resources", "accelerator-key", InvalidResourcesError, "accelerators=", submit({"custom": {"accelerator_type:A100": 1}})),
    Case("resources", "models-without-gpu", InvalidResourcesError, "without gpu", submit({"cpu": 1, "accelerators": ["A100"]})),
    Case("resources", "malformed-model", InvalidResourcesError, "malformed", submit({"gpu": 1, "accelerators": ["A100!"]})),
    Case("resources", "unknown-field", InvalidResourcesError, "gpus", submit({"gpus": 2})),
    Case("resources", "not-a-mapping", InvalidResourcesError, "not a Resources or a mapping", submit(["cpu", 1])),
    # --- gangs -----------------------------------------------------------------------------------------------------
    Case("gang", "no-bundles", InvalidResourcesError, "at least one bundle", submit(gang={"bundles": []})),
    Case("gang", "empty-bundle", InvalidResourcesError, "asks for nothing", submit(gang={"bundles": [{"cpu": 1}, {}]})),
    Case("gang", "unknown-strategy", InvalidResourcesError, "unknown gang strategy", submit(gang={"bundles": [{"cpu": 1}], "strategy": "SIDEWAYS"})),
    Case("gang", "mixed-models", InvalidResourcesError, "different GPU models", submit(gang={"bundles": [GPU_A100, GPU_ANY]})),
    Case("gang", "bundles-not-a-list", InvalidResourcesError, "not a list of bundles", submit(gang={"bundles": {"cpu": 1}})),
    Case("gang", "zero-bundles", InvalidResourcesError, "a gang of 0", lambda e: Gang.of(0, Resources(cpu=1))),
    Case("gang", "bad-bundle", InvalidResourcesError, "bundle 1", submit(gang={"bundles": [{"cpu": 1}, {"cpu": -2}]})),
    Case("gang", "gang-and-resources", InvalidRequestError, "both resources and a gang", submit({"cpu": 1}, gang={"bundles": [{"cpu": 1}]})),
    Case("gang", "zero-reservation-timeout", InvalidRequestError, "timeout_s", submit(gang={"bundles": [{"cpu": 1}]}, reservation_timeout_s=0)),
    Case("gang", "text-reservation-timeout", InvalidRequestError, "timeout_s", submit(gang={"bundles": [{"cpu": 1}]}, reservation_timeout_s="soon")),
    # --- entrypoints -----------------------------------------------------------------------------------------------
    Case("entrypoint", "empty", InvalidRequestError, "entrypoint is empty", submit({"cpu": 1}, "")),
    Case("entrypoint", "blank", InvalidRequestError, "entrypoint is empty", submit({"cpu": 1}, " \n\t ")),
    Case("entrypoint", "not-text", InvalidRequestError, "entrypoint is empty", submit({"cpu": 1}, None)),
    Case("entrypoint", "nul-byte", InvalidRequestError, "entrypoint", submit({"cpu": 1}, "echo a\x00b")),
    # --- runtime_env and other request fields -----------------------------------------------------------------------
    Case("runtime_env", "not-a-mapping", InvalidRequestError, "runtime_env", submit({"cpu": 1}, runtime_env=["pip"])),
    Case("runtime_env", "env-var-not-text", InvalidRequestError, "env_vars", submit({"cpu": 1}, runtime_env={"env_vars": {"N": 1}})),
    Case("runtime_env", "missing-working-dir", InvalidRequestError, "working_dir", submit({"cpu": 1}, runtime_env={"working_dir": "/nonexistent/dir"})),
    Case("request", "unknown-pin", UnknownClusterError, "no cluster named 'nope'", submit({"cpu": 1}, cluster="nope")),
    Case("request", "labels-not-a-mapping", InvalidRequestError, "labels", submit({"cpu": 1}, labels=["kind"])),
    Case("request", "reserved-metadata", InvalidRequestError, "reserved by rayfleet", submit({"cpu": 1}, metadata={"rayfleet.job_id": "x"})),
    Case("request", "metadata-not-a-mapping", InvalidRequestError, "metadata", submit({"cpu": 1}, metadata=["x"])),
    Case("request", "unknown-policy", InvalidRequestError, "unknown policy 'random'", submit({"cpu": 1}, policy="random"), probes=True),
    Case("request", "python-unknown-policy", ConfigError, "Input should be 'binpack'", lambda e: Fleet(clusters=[{"name": "a", "address": e.ray.url}], policy="random", ledger=e.ledger_path)),
    # --- ledger paths ----------------------------------------------------------------------------------------------
    Case("ledger", "a-directory", LedgerError, "cannot open the ledger", ledger_at(a_directory)),
    Case("ledger", "under-a-file", LedgerError, "Not a directory", ledger_at(under_a_file)),
    Case("ledger", "not-a-database", LedgerError, "not a database", ledger_at(not_a_database)),
    Case("ledger", "control-character-in-file", ConfigError, "ledger path", fleet_with(ledger="ledger\n.db")),
    Case("ledger", "nul-byte-in-python", LedgerError, "ledger", ledger_at(lambda e: Path(str(e.tmp / "cases" / "a\x00b.db")))),
    # --- CLI flags (exit code 2 = usage; the library's error and hint are printed) ---------------------------------------
    Case("cli", "cpu-not-a-number", InvalidRequestError, "Invalid value for '--cpu'", cli("submit", F, L, "--cpu", "two", "--", "true"), cli=True),
    Case("cli", "gpu-fraction-above-1", InvalidResourcesError, "fractional above 1", cli("submit", F, L, "--gpu", "1.5", "--", "true"), cli=True),
    Case("cli", "memory-unit", InvalidResourcesError, "not a recognised amount", cli("submit", F, L, "--memory", "4XB", "--", "true"), cli=True),
    Case("cli", "accelerator-malformed", InvalidResourcesError, "malformed", cli("submit", F, L, "--gpu", "1", "--accelerator", "A100,!!", "--", "true"), cli=True),
    Case("cli", "label-without-value", InvalidRequestError, "not KEY=VALUE", cli("submit", F, L, "--label", "kind", "--", "true"), cli=True),
    Case("cli", "resource-not-a-number", InvalidRequestError, "is not a number", cli("submit", F, L, "--resource", "TPU=four", "--", "true"), cli=True),
    Case("cli", "no-entrypoint", InvalidRequestError, "entrypoint is empty", cli("submit", F, L, "--cpu", "1"), cli=True),
    Case("cli", "unknown-policy", InvalidRequestError, "unknown policy", cli("submit", F, L, "--policy", "random", "--", "true"), cli=True, probes=True),
    Case("cli", "missing-fleet-file", ConfigError, "cannot read the fleet file", cli("submit", "--fleet=/nonexistent/fleet.yaml", L, "--", "true"), cli=True),
    Case("cli", "dispatch-interval-zero", InvalidRequestError, "--interval 0", cli("dispatch", F, L, "--interval", "0"), cli=True),
    Case("cli", "dispatch-interval-negative", InvalidRequestError, "--interval -5", cli("dispatch", F, L, "--interval", "-5"), cli=True),
    Case("cli", "local-cluster-cpus-not-a-number", InvalidRequestError, "cpus='two'", cli("local", "up", "--name", "never", "--cluster", "x:cpus=two"), cli=True),
    Case("cli", "local-cluster-gpus-fraction", InvalidRequestError, "gpus='1.5'", cli("local", "up", "--name", "never", "--cluster", "x:gpus=1.5"), cli=True),
    Case("cli", "local-cluster-unknown-field", InvalidRequestError, "is not one of", cli("local", "up", "--name", "never", "--cluster", "x:color=red"), cli=True),
]  # fmt: skip


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=f"{case.area}-{case.id}", marks=marks)


def test_the_catalogue_has_at_least_30_cases_over_every_area() -> None:
    areas = {c.area for c in CASES}
    assert len(CASES) >= 30
    assert {"config", "address", "headers", "resources", "gang", "entrypoint", "runtime_env", "ledger", "cli"} <= areas
    assert len({(c.area, c.id) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gets_a_typed_error_with_a_hint_and_leaves_no_side_effect(env: Env, case: Case) -> None:
    rows_before = ledger_rows(env.ledger_path)
    files_before = files_under(env.tmp)

    if case.cli:
        result = case.run(env)
        text = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code == EXIT_USAGE, text
        assert case.says in text
        assert "To fix:" in text or "Try 'root" in text or "--help" in text  # click's own usage errors point to help
    else:
        with pytest.raises(case.error) as caught:
            case.run(env)
        error = caught.value
        assert case.says in str(error)
        assert error.hint, "every error says what to do"
        assert str(error).endswith(f"To fix: {error.hint}")
        assert SECRET not in str(error) and SECRET not in repr(error)

    assert env.k8s.lines == []  # no cluster created, not even a Kubernetes request
    if case.probes:
        assert all(line.startswith("GET ") for line in env.ray.lines), env.ray.lines  # reads only: nothing submitted
    else:
        assert env.ray.lines == []  # it failed before any network
    assert ledger_rows(env.ledger_path) == rows_before
    assert files_under(env.tmp) == files_before


def test_the_side_effect_checks_can_fail(env: Env) -> None:
    """The checks above see what they claim to: a valid request reaches the tripwire; a recorded job changes rows."""
    before = ledger_rows(env.ledger_path)
    assert before["jobs"]  # seeded: an equal comparison is not two empty tables

    with pytest.raises(RayfleetError):  # the tripwire hangs up: the cluster does not answer
        env.fleet.submit("true", {"cpu": 1}, cluster="only")
    other = Ledger(env.ledger_path)
    other.add_job("rf-0000000000ff", entrypoint="true", request={"resources": {"cpu": 1.0}})
    other.close()

    assert env.ray.lines and env.ray.lines[0].startswith("GET /api/")  # a probe reached the wire
    assert ledger_rows(env.ledger_path) != before


def test_a_ledger_of_a_newer_schema_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = path.read_bytes()

    with pytest.raises(LedgerError, match="newer than this rayfleet knows"):
        Ledger(path)

    assert path.read_bytes() == before
