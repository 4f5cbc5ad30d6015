"""Secrets and safety (issue 7, part 5), against the real local clusters of the session.

- Auth header values (a ``${ENV}`` token and a literal key) never appear in logs, the ledger file, exceptions, reprs,
  Ray's record of the job (which anyone who reaches the dashboard can read), the job's output, or CLI output.
- TLS verification is on by default: a dashboard with a certificate nobody vouched for is refused; with its CA given
  in ``verify_tls`` it is accepted (a real TLS server on loopback).
- Plain HTTP to a non-loopback host draws a warning (once), loopback and https do not.
- The ledger (and its WAL files and new directory) is created readable by the user only, whatever the umask.

Ownership labels guarding every delete are tested against the Kubernetes test API server in tests/k8s/test_faults.py.
"""

from __future__ import annotations

import datetime
import http.server
import json
import logging
import os
import ssl
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from rayfleet import Cluster, ConfigError, Fleet, JobState, RayfleetError
from rayfleet.capacity import Prober
from rayfleet.config import warn_if_plain_http
from rayfleet.errors import InsecureAddressWarning

pytestmark = pytest.mark.integration

TOKEN = "tok-7c1e9a44d2b8f03a"  # resolved from $RF_TEST_TOKEN
API_KEY = "key-0d5b6e2f9a1c8e77"  # a literal header value in the fleet file
SECRETS = (TOKEN, API_KEY)


def leaks(text: str | bytes) -> list[str]:
    """The secrets found in ``text``."""
    data = text if isinstance(text, bytes) else text.encode(errors="replace")
    return [s for s in SECRETS if s.encode() in data]


@pytest.fixture()
def secret_fleet(tmp_path: Path, addresses: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RF_TEST_TOKEN", TOKEN)
    headers = {"Authorization": "Bearer ${RF_TEST_TOKEN}", "X-Api-Key": API_KEY}
    data = {
        "name": "secrets",
        "ledger": str(tmp_path / "ledger.db"),
        "clusters": [
            {"name": name, "address": address, "headers": headers, "labels": {"kind": name}}
            for name, address in sorted(addresses.items())
        ]
        + [{"name": "down", "address": "http://127.0.0.1:9", "headers": headers, "labels": {"kind": "down"}}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_leak_scanner_finds_a_secret_where_there_is_one(secret_fleet: Path) -> None:
    """The scan below can fail: the headers a client sends do carry both secrets."""
    with Fleet.from_file(secret_fleet) as fleet:
        resolved = fleet.clusters[0].resolved_headers()
    assert leaks(json.dumps(resolved)) == list(SECRETS)


def test_auth_headers_never_appear_in_logs_ledger_errors_reprs_ray_or_cli_output(
    secret_fleet: Path, tmp_path: Path, addresses: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: rayfleet, ray, urllib3, requests, kubernetes
    seen: dict[str, str] = {}
    with Fleet.from_file(secret_fleet) as fleet:
        handle = fleet.submit("python -c \"print('secret test job ran')\"", {"cpu": 0.5}, labels={"kind": "cpu"})
        assert handle.wait(timeout=120) is JobState.SUCCEEDED
        seen["logs"] = handle.logs()
        assert "secret test job ran" in seen["logs"]
        seen["reprs"] = "\n".join(
            repr(x)
            for x in (
                fleet.config,
                *fleet.config.clusters,
                handle,
                handle.record,
                fleet.explain({"cpu": 1}),
                fleet.snapshots(),
                fleet.jobs(),
            )
        )
        seen["str-config"] = str(fleet.config) + fleet.config.to_env_json()
        errors: list[BaseException] = []
        for attempt in (
            lambda: fleet.submit("true", {"cpu": 64}),  # NoCapacityError, listing every cluster
            lambda: fleet.submit("true", {"cpu": 1}, cluster="down"),  # unreachable (with the headers configured)
            lambda: fleet.submit("true", {"cpu": -1}),
            lambda: fleet.job("rf-000000000000"),
            lambda: Cluster(name="x", address="http://127.0.0.1:1", headers={"X-Api-Key": f"{API_KEY}\r\nX: 1"}),
            lambda: Cluster(name="x", address=f"http://user:{TOKEN}@127.0.0.1:1"),
        ):
            with pytest.raises(RayfleetError) as caught:
                attempt()
            errors.append(caught.value)
        seen["errors"] = "\n".join(f"{e!s}\n{e!r}\n{e.args!r}" for e in errors)
        ray_record = requests.get(f"{addresses['cpu']}/api/jobs/{handle.submission_id}", timeout=10).json()
        seen["ray-job-record"] = json.dumps(ray_record)  # metadata and runtime_env, as the dashboard shows them
        assert "${RF_TEST_TOKEN}" in seen["ray-job-record"]  # the template travelled (nested dispatch), not the value
    seen["log-records"] = caplog.text
    ledger_dir = tmp_path
    for path in sorted(ledger_dir.glob("ledger.db*")):
        seen[f"file {path.name}"] = path.read_bytes().decode(errors="replace")
    assert "file ledger.db" in seen

    env = {**os.environ, "COLUMNS": "250", "RF_TEST_TOKEN": TOKEN}
    for args in (
        ["clusters"],
        ["explain", "--cpu", "1"],
        ["submit", "--cpu", "0.5", "--label", "kind=cpu", "--wait", "--", "python", "-c", "print('via cli')"],
        ["jobs"],
        ["submit", "--cpu", "64", "--", "true"],
        ["submit", "--cluster", "down", "--", "true"],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "rayfleet", args[0], "--fleet", str(secret_fleet), *args[1:]],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        seen[f"cli {' '.join(args)}"] = run.stdout + run.stderr
    assert any("via cli" in text for where, text in seen.items() if "--wait" in where)  # the CLI worked, headers in use

    assert {where: leaks(text) for where, text in seen.items() if leaks(text)} == {}


# ----- TLS ------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def tls_dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server on loopback with a self-signed certificate for 127.0.0.1; its /api/version answers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rayfleet-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ray_version": "2.60.0", "session_name": "tls"}).encode()
            self.send_response(200 if self.path == "/api/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    server.shutdown()
    server.server_close()


def test_tls_is_verified_by_default_and_a_given_ca_is_trusted(tls_dashboard: tuple[str, Path]) -> None:
    url, ca = tls_dashboard
    default = Cluster(name="tls", address=url)
    trusting = Cluster(name="tls-ca", address=url, verify_tls=str(ca))
    assert default.verify_tls is True

    refused = Prober([default], timeout=5).snapshots(max_age=0)["tls"]
    accepted = Prober([trusting], timeout=5).snapshots(max_age=0)["tls-ca"]

    assert not refused.healthy and "TLS failed" in refused.error  # an unverified certificate is not trusted
    assert not accepted.healthy and "HTTP 404" in accepted.error  # TLS passed; this server is no Ray dashboard


# ----- plain HTTP ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "warned"),
    [
        ("http://10.20.30.40:8265", True),
        ("http://ray-head.example.com:8265", True),
        ("http://127.0.0.1:8265", False),
        ("http://localhost:8265", False),
        ("http://[::1]:8265", False),
        ("https://ray-head.example.com", False),
    ],
)
def test_plain_http_to_a_non_loopback_host_draws_one_warning(address: str, warned: bool) -> None:
    cluster = Cluster(name="w", address=address, headers={"Authorization": "Bearer ${RF_TEST_TOKEN}"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default action for a UserWarning
        warn_if_plain_http(cluster)
        warn_if_plain_http(cluster)  # once per address
    mine = [w for w in caught if issubclass(w.category, InsecureAddressWarning)]
    assert len(mine) == (1 if warned else 0)
    if warned:
        assert "unencrypted" in str(mine[0].message) and "auth headers" in str(mine[0].message)


def test_the_prober_warns_before_it_talks_plain_http_to_a_remote_dashboard() -> None:
    prober = Prober([Cluster(name="remote", address="http://10.99.99.99:8265")], timeout=0.1)
    try:
        with pytest.warns(InsecureAddressWarning, match="10.99.99.99"):
            prober._session("remote")  # the session is made (no connection yet): the warning comes first
    finally:
        prober.close()


# ----- the ledger file ----------------------------------------------------------------------------------------------


def test_the_ledger_and_its_directory_are_private_whatever_the_umask(secret_fleet: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "new-dir" / "ledger.db"
    old = os.umask(0)
    try:
        with Fleet.from_file(secret_fleet, ledger=ledger) as fleet:
            fleet.submit("true", {"cpu": 0.5}, labels={"kind": "cpu"}).wait(timeout=120)
    finally:
        os.umask(old)

    assert stat.S_IMODE(ledger.parent.stat().st_mode) == 0o700
    files = sorted(ledger.parent.glob("ledger.db*"))
    assert ledger in files
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


def test_a_secret_in_an_invalid_header_is_not_repeated_by_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Cluster(name="x", address="http://127.0.0.1:1", headers={"Bad Name": TOKEN})
    assert leaks(str(caught.value) + repr(caught.value)) == []
