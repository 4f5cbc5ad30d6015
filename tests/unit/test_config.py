"""Unit tests for `rayfleet.config`: YAML fleet files, validation errors, ``${ENV}`` interpolation, header secrets."""

from __future__ import annotations

import json
import textwrap

import pytest

from rayfleet.config import FLEET_ENV, FLEET_FILE_ENV, Cluster, FleetConfig, interpolate
from rayfleet.dispatch import Dispatcher
from rayfleet.errors import ConfigError
from rayfleet.ledger import Ledger

VALID = """\
clusters:
  - name: cpu-west
    address: http://10.0.0.5:8265/
    labels: {cloud: gcp, region: us-west1}
    cost_per_cpu_hour: 0.04
  - name: gpu_east
    address: head-east:8265
    labels: {cloud: aws, tier: 1}
    cost_per_cpu_hour: 0.05
    cost_per_gpu_hour: 2.5
    verify_tls: false
policy: spread
ledger: /var/lib/rayfleet/ledger.db
probe_ttl_s: 1.5
probe_timeout_s: 3
hold_ttl_s: 20
"""


def write(tmp_path, text, name="fleet.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path, text) -> tuple[ConfigError, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        FleetConfig.from_file(path)
    return info.value, str(path)


# ----- a valid file -----------------------------------------------------------------------------------------------


def test_valid_file_loads_every_setting(tmp_path):
    config = FleetConfig.from_file(write(tmp_path, VALID))

    assert [c.name for c in config.clusters] == ["cpu-west", "gpu_east"]
    west, east = config.clusters
    assert west.labels == {"cloud": "gcp", "region": "us-west1"}
    assert (west.cost_per_cpu_hour, west.cost_per_gpu_hour) == (0.04, None)
    assert east.labels == {"cloud": "aws", "tier": "1"}  # label values are strings, even when YAML says 1
    assert (east.cost_per_cpu_hour, east.cost_per_gpu_hour, east.verify_tls) == (0.05, 2.5, False)
    assert config.policy == "spread"
    assert config.ledger == "/var/lib/rayfleet/ledger.db"
    assert (config.probe_ttl_s, config.probe_timeout_s, config.hold_ttl_s) == (1.5, 3.0, 20.0)


def test_addresses_are_normalised_to_dashboard_urls(tmp_path):
    config = FleetConfig.from_file(write(tmp_path, VALID))
    assert config.cluster("cpu-west").address == "http://10.0.0.5:8265"  # trailing slash dropped
    assert config.cluster("gpu_east").address == "http://head-east:8265"  # scheme added


def test_defaults_apply_when_only_clusters_are_given(tmp_path):
    config = FleetConfig.from_file(write(tmp_path, "clusters:\n  - {name: a, address: 'https://h'}\n"))
    assert config.policy == "binpack"
    assert config.ledger is None
    assert (config.probe_ttl_s, config.probe_timeout_s, config.hold_ttl_s) == (2.0, 2.0, 15.0)
    assert config.clusters[0].verify_tls is True
    assert config.clusters[0].address == "https://h"


def test_cluster_lookup_by_name_returns_none_for_unknown_names(tmp_path):
    config = FleetConfig.from_file(write(tmp_path, VALID))
    assert config.cluster("gpu_east").name == "gpu_east"
    assert config.cluster("nope") is None


def test_fleet_config_is_frozen(tmp_path):
    config = FleetConfig.from_file(write(tmp_path, VALID))
    with pytest.raises(ValueError):
        config.policy = "cost"
    assert config.policy == "spread"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("http://10.0.0.5:8265", "http://10.0.0.5:8265", id="as-is"),
        pytest.param("10.0.0.5:8265", "http://10.0.0.5:8265", id="scheme-added"),
        pytest.param(" https://head/ ", "https://head", id="spaces-and-slash-dropped"),
        pytest.param("http://head:8265/proxy/", "http://head:8265/proxy", id="path-kept"),
    ],
)
def test_cluster_address_is_normalised(address, expected):
    assert Cluster(name="a", address=address).address == expected


@pytest.mark.parametrize(
    "address",
    ["http://", "https://", "ftp://h:21", "http://h:port", "http://h:70000", ""],
    ids=["http-without-host", "https-without-host", "ftp", "port-not-a-number", "port-out-of-range", "empty"],
)
def test_cluster_rejects_what_is_not_a_dashboard_url(address):
    with pytest.raises(ValueError, match="address"):
        Cluster(name="a", address=address)


@pytest.mark.parametrize(
    "name",
    ["GPU", "-a", "a-", "a b", "", "x" * 64],
    ids=["uppercase", "leading-dash", "trailing-dash", "space", "empty", "too-long"],
)
def test_cluster_rejects_names_that_are_not_short_lowercase_identifiers(name):
    with pytest.raises(ValueError, match="cluster name"):
        Cluster(name=name, address="http://h:8265")


def test_cluster_labels_none_means_no_labels():
    assert Cluster(name="a", address="h", labels=None).labels == {}


# ----- file-level errors ------------------------------------------------------------------------------------------


def test_malformed_yaml_names_the_file_and_the_line(tmp_path):
    error, path = load_error(
        tmp_path,
        """\
        clusters:
          - name: a
            address: http://h:8265
           labels: x
        """,
    )
    assert error.source == path
    assert str(error).startswith(path)
    assert "malformed YAML at line 4" in str(error)
    assert "To fix:" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- name: a\n  address: h\n", id="list"),
        pytest.param("just a string\n", id="scalar"),
        pytest.param("", id="empty"),
    ],
)
def test_a_file_that_is_not_a_mapping_is_rejected_with_the_fix(tmp_path, text):
    error, path = load_error(tmp_path, text)
    assert error.source == path
    assert "must be a mapping" in str(error)
    assert "To fix: start the file with 'clusters:'" in str(error)


def test_a_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        FleetConfig.from_file(path)
    assert info.value.source == str(path)
    assert "cannot read" in str(info.value)


# ----- content errors: key and fix --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message", "fix"),
    [
        pytest.param(
            "clusters:\n  - name: a\n",
            "clusters[0](name=a).address",
            "Field required",
            "add 'address'",
            id="missing-address",
        ),
        pytest.param(
            "clusters:\n  - address: h\n",
            "clusters[0].name",
            "Field required",
            "add 'name'",
            id="missing-name",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: 'ftp://h:1'}\n",
            "clusters[0](name=a).address",
            "is not a dashboard URL",
            "give the dashboard URL, e.g. http://head-host:8265",
            id="address-wrong-scheme",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: 'http://'}\n",
            "clusters[0](name=a).address",
            "is not a dashboard URL",
            "give the dashboard URL, e.g. http://head-host:8265",
            id="address-without-host",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: 'http://h:port'}\n",
            "clusters[0](name=a).address",
            "malformed port",
            "give the dashboard URL, e.g. http://head-host:8265",
            id="address-bad-port",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: 'http://h:99999'}\n",
            "clusters[0](name=a).address",
            "malformed port",
            "give the dashboard URL, e.g. http://head-host:8265",
            id="address-port-out-of-range",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h}\n  - {name: GPU, address: h}\n",
            "clusters[1](name=GPU).name",
            "lowercase",
            "use a unique lowercase name",
            id="uppercase-name",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h, adress: x}\n",
            "clusters[0](name=a).adress",
            "unknown key",
            "did you mean 'address'?",
            id="unknown-cluster-key",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h}\npolcy: spread\n",
            "polcy",
            "unknown key",
            "did you mean 'policy'?",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h}\npolicy: cheapest\n",
            "policy",
            "'binpack', 'spread', 'cost' or 'fragmentation'",
            "use one of binpack, spread, cost, fragmentation",
            id="bad-policy",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h, cost_per_cpu_hour: -1}\n",
            "clusters[0](name=a).cost_per_cpu_hour",
            "greater than or equal to 0",
            "correct the value",
            id="negative-price",
        ),
        pytest.param(
            "clusters:\n  - {name: a, address: h}\nprobe_timeout_s: 0\n",
            "probe_timeout_s",
            "greater than 0",
            "correct the value",
            id="zero-probe-timeout",
        ),
        pytest.param(
            "policy: spread\n",
            "clusters",
            "no clusters and no provisioners",
            "add 'clusters:'",
            id="no-clusters",
        ),
    ],
)
def test_invalid_content_names_the_file_the_key_and_the_fix(tmp_path, text, key, message, fix):
    error, path = load_error(tmp_path, text)
    assert error.source == path
    assert error.key == key
    assert str(error).startswith(f"{path}, key {key!r}: ")
    assert message in str(error)
    assert f"To fix: {fix}" in str(error)
    assert "Value error," not in str(error)


def test_duplicate_cluster_names_are_rejected_naming_the_cluster(tmp_path):
    error, path = load_error(tmp_path, "clusters:\n  - {name: a, address: h1}\n  - {name: a, address: h2}\n")
    assert error.source == path
    assert "cluster name 'a' appears twice" in str(error)
    assert "To fix:" in str(error)


def test_build_without_a_file_has_no_source():
    with pytest.raises(ConfigError) as info:
        FleetConfig.build(clusters=[{"name": "a"}])
    assert info.value.source is None
    assert info.value.key == "clusters[0](name=a).address"
    assert str(info.value).startswith("key 'clusters[0](name=a).address': ")


# ----- ${ENV} interpolation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("${RF_HOST}", "head.example", id="set"),
        pytest.param("http://${RF_HOST}:${RF_PORT}", "http://head.example:8265", id="several"),
        pytest.param("${RF_HOST:-other}", "head.example", id="set-ignores-default"),
        pytest.param("${RF_UNSET:-fallback}", "fallback", id="unset-uses-default"),
        pytest.param("${RF_UNSET:-}", "", id="unset-empty-default"),
        pytest.param("${RF_EMPTY:-fallback}", "fallback", id="empty-uses-default-like-the-shell"),
        pytest.param("${RF_EMPTY}", "", id="empty-without-default"),
        pytest.param("$RF_HOST and {RF_HOST}", "$RF_HOST and {RF_HOST}", id="not-a-reference"),
        pytest.param("plain", "plain", id="no-reference"),
    ],
)
def test_interpolate_fills_references_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("RF_HOST", "head.example")
    monkeypatch.setenv("RF_PORT", "8265")
    monkeypatch.setenv("RF_EMPTY", "")
    monkeypatch.delenv("RF_UNSET", raising=False)
    assert interpolate(text) == expected


def test_interpolate_names_the_missing_variable_the_key_and_the_fix(monkeypatch):
    monkeypatch.delenv("RF_UNSET", raising=False)
    with pytest.raises(ConfigError) as info:
        interpolate("x-${RF_UNSET}", key="clusters[0].address", source="fleet.yaml")
    error = info.value
    assert (error.source, error.key) == ("fleet.yaml", "clusters[0].address")
    assert "environment variable RF_UNSET is referenced but not set" in str(error)
    assert "To fix: export RF_UNSET=..." in str(error)
    assert "${RF_UNSET:-default}" in str(error)


def test_file_values_are_interpolated_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_HOST", "10.1.2.3")
    monkeypatch.setenv("RF_REGION", "eu-west1")
    monkeypatch.delenv("RF_POLICY", raising=False)
    config = FleetConfig.from_file(
        write(
            tmp_path,
            """\
            clusters:
              - name: a
                address: http://${RF_HOST}:${RF_PORT:-8265}
                labels: {region: "${RF_REGION}"}
            policy: ${RF_POLICY:-cost}
            """,
        )
    )
    assert config.clusters[0].address == "http://10.1.2.3:8265"
    assert config.clusters[0].labels == {"region": "eu-west1"}
    assert config.policy == "cost"


def test_a_missing_variable_in_a_file_names_the_key_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("RF_UNSET", raising=False)
    error, path = load_error(tmp_path, "clusters:\n  - {name: a, address: 'http://${RF_UNSET}:8265'}\n")
    assert (error.source, error.key) == (path, "clusters[0].address")
    assert "RF_UNSET" in str(error)
    assert "To fix: export RF_UNSET=..." in str(error)


# ----- header secrets ---------------------------------------------------------------------------------------------

HEADERS = """\
clusters:
  - name: a
    address: http://h:8265
    headers:
      Authorization: ${RF_TOKEN}
      X-Team: ${RF_TEAM:-ml}
      X-Literal: literal-s3cret
"""


def test_header_templates_are_kept_as_templates(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TOKEN", "tok-123")
    cluster = FleetConfig.from_file(write(tmp_path, HEADERS)).clusters[0]
    assert cluster.headers == {
        "Authorization": "${RF_TOKEN}",
        "X-Team": "${RF_TEAM:-ml}",
        "X-Literal": "literal-s3cret",
    }


def test_resolved_headers_fill_templates_from_the_environment_when_called(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TOKEN", "tok-123")
    monkeypatch.delenv("RF_TEAM", raising=False)
    cluster = FleetConfig.from_file(write(tmp_path, HEADERS)).clusters[0]
    assert cluster.resolved_headers() == {"Authorization": "tok-123", "X-Team": "ml", "X-Literal": "literal-s3cret"}

    monkeypatch.setenv("RF_TOKEN", "rotated-456")
    assert cluster.resolved_headers()["Authorization"] == "rotated-456"


def test_a_header_variable_missing_at_load_is_reported_with_its_key(tmp_path, monkeypatch):
    monkeypatch.delenv("RF_TOKEN", raising=False)
    error, path = load_error(tmp_path, HEADERS)
    assert (error.source, error.key) == (path, "clusters[0].headers.Authorization")
    assert "RF_TOKEN" in str(error)


def test_a_header_variable_unset_after_load_fails_when_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TOKEN", "tok-123")
    cluster = FleetConfig.from_file(write(tmp_path, HEADERS)).clusters[0]
    monkeypatch.delenv("RF_TOKEN")
    with pytest.raises(ConfigError) as info:
        cluster.resolved_headers()
    assert info.value.key == "clusters.a.headers.Authorization"
    assert "To fix: export RF_TOKEN=..." in str(info.value)


def test_to_env_json_drops_literal_header_values_and_keeps_templates(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TOKEN", "tok-123")
    config = FleetConfig.from_file(write(tmp_path, HEADERS))
    raw = config.to_env_json()
    data = json.loads(raw)
    assert data["clusters"][0]["headers"] == {"Authorization": "${RF_TOKEN}", "X-Team": "${RF_TEAM:-ml}"}
    assert "literal-s3cret" not in raw
    assert "tok-123" not in raw


def test_to_env_json_round_trips_through_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RF_TOKEN", "tok-123")
    fleet = VALID.replace("clusters:\n", HEADERS, 1)  # cluster "a" with headers, then the VALID clusters
    config = FleetConfig.from_file(write(tmp_path, fleet))
    monkeypatch.delenv(FLEET_FILE_ENV, raising=False)
    monkeypatch.setenv(FLEET_ENV, config.to_env_json())

    again = FleetConfig.from_env()

    assert [c.name for c in again.clusters] == ["a", "cpu-west", "gpu_east"]
    assert again.cluster("a").resolved_headers()["Authorization"] == "tok-123"
    assert again.cluster("gpu_east") == config.cluster("gpu_east")
    assert (again.policy, again.ledger, again.hold_ttl_s) == (config.policy, config.ledger, config.hold_ttl_s)


def test_from_env_reads_a_fleet_file_path(tmp_path, monkeypatch):
    monkeypatch.delenv(FLEET_ENV, raising=False)
    monkeypatch.setenv(FLEET_FILE_ENV, str(write(tmp_path, VALID)))
    assert FleetConfig.from_env() == FleetConfig.from_file(tmp_path / "fleet.yaml")


def test_from_env_is_none_without_a_fleet(monkeypatch):
    monkeypatch.delenv(FLEET_ENV, raising=False)
    monkeypatch.delenv(FLEET_FILE_ENV, raising=False)
    assert FleetConfig.from_env() is None


def test_from_env_rejects_malformed_json_with_the_fix(monkeypatch):
    monkeypatch.setenv(FLEET_ENV, "{not json")
    with pytest.raises(ConfigError, match=r"To fix: set it with FleetConfig\.to_env_json"):
        FleetConfig.from_env()


def test_repr_of_a_cluster_never_shows_header_values():
    cluster = Cluster(
        name="a",
        address="http://h:8265",
        headers={"Authorization": "Bearer literal-s3cret", "X-Token": "${RF_TOKEN}"},
    )
    for text in (repr(cluster), str(cluster), f"{cluster}", repr(FleetConfig(clusters=[cluster]))):
        assert "literal-s3cret" not in text
        assert "RF_TOKEN" not in text
        assert "'a'" in text


def test_every_problem_of_a_file_is_reported_at_once_with_the_key_each_was_meant_to_be(tmp_path) -> None:
    error, _ = load_error(
        tmp_path,
        "clusters:\n  - {name: a, adress: 'http://h:1'}\n  - {name: b, address: 'http://h:2', zzz: 1}\n"
        "polcy: spread\nprovisioners:\n  - {kind: kuberay, name: k, contxt: c, templates: []}\n",
    )
    assert error.key is None and error.hint == "correct each key as said"
    assert [(key, fix) for key, _, fix in error.problems] == [
        ("clusters[0](name=a).adress", "did you mean 'address'?"),  # not also "address: Field required"
        ("clusters[1](name=b).zzz", "remove it or correct its spelling (the keys here: name, address, labels, "
         "headers, cost_per_cpu_hour, cost_per_gpu_hour, verify_tls; docs/configuration.md)"),
        ("provisioners[0](name=k).contxt", "did you mean 'context'?"),  # the key in the file, not pydantic's tag
        ("polcy", "did you mean 'policy'?"),
    ]  # fmt: skip
    assert str(error).splitlines()[0].endswith(": 4 problems:")
    assert "  - key 'polcy': unknown key (to fix: did you mean 'policy'?)" in str(error)


def test_a_header_variable_with_a_line_break_is_a_config_error_naming_the_variable_not_its_value(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("RF_TEST_TOKEN", "s3cret\n")
    text = "clusters:\n  - {name: a, address: 'http://h:1', headers: {Authorization: 'Bearer ${RF_TEST_TOKEN}'}}\n"
    error, _ = load_error(tmp_path, text)
    assert error.key == "clusters[0].headers.Authorization"
    assert "$RF_TEST_TOKEN has a line break or control character" in str(error)
    assert "trailing newline" in error.hint and "s3cret" not in str(error)
    with pytest.raises(ConfigError) as built:  # built in Python, found when the fleet is made, not at a probe
        Dispatcher(
            FleetConfig.build(clusters=[{"name": "a", "address": "http://h:1", "headers": {"X": "${RF_TEST_TOKEN}"}}]),
            Ledger(tmp_path / "l.db"),
        )
    assert built.value.key == "clusters.a.headers.X" and "s3cret" not in str(built.value)
