"""Fleet definitions: `Cluster` and `FleetConfig`, from Python objects or a YAML file, with ``${ENV}`` interpolation.

Secrets stay out of files and out of Ray: header values may be ``${VAR}`` templates. They are kept as templates in
the config and resolved from the environment only when a client is built, so a fleet definition handed to a nested
job (`FleetConfig.to_env_json`) carries the template, never the secret.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from rayfleet.errors import ConfigError, InsecureAddressWarning
from rayfleet.templates import ClusterTemplate

POLICIES = ("binpack", "spread", "cost", "fragmentation")
Policy = Literal["binpack", "spread", "cost", "fragmentation"]
FLEET_ENV = "RAYFLEET_FLEET"  # JSON fleet definition handed to jobs for nested dispatch
FLEET_FILE_ENV = "RAYFLEET_FLEET_FILE"  # or a path to a fleet YAML file

_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]{0,61}[a-z0-9])?$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# the fleet's name is the ownership label on every cluster it creates: it must be a label value as it is, so that two
# fleets can never be mapped onto the same label (and delete each other's clusters)
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP token (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: header injection, broken requests


def interpolate(text: str, *, key: str = "", source: str | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` with values from the environment.

    Raises:
        ConfigError: a referenced variable is not set and has no default.
    """

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if default is not None and not value:  # like the shell, ':-' also replaces an empty value
            return default
        if value is not None:
            return value
        raise ConfigError(
            f"environment variable {name} is referenced but not set",
            f"export {name}=... before running, or write ${{{name}:-default}}",
            source=source,
            key=key or None,
        )

    return _ENV_REF.sub(sub, text)


def header_value(template: str, *, key: str, source: str | None = None) -> str:
    """A header's value with its ``${ENV}`` templates filled in, checked for what would break the request.

    Raises:
        ConfigError: a variable is not set, or what it holds has a line break or control character (header
            injection; most often the newline at the end of a token file). The value is never shown.
    """
    value = interpolate(template, key=key, source=source)
    if not _CONTROL.search(value):
        return value
    names = [m.group(1) for m in _ENV_REF.finditer(template) if _CONTROL.search(os.environ.get(m.group(1)) or "")]
    where = f"${names[0]}" if names else "the header's value"
    raise ConfigError(
        f"{where} has a line break or control character, which cannot go into an HTTP header",
        f"set {where} without it: most often a token file's trailing newline ('$(cat FILE)' in the shell drops it)",
        source=source,
        key=key,
    )


class Cluster(BaseModel):
    """One Ray cluster of the fleet, reached through its dashboard (Ray's Job Submission API).

    Attributes:
        name: unique in the fleet; lowercase letters, digits, '-' and '_'.
        address: the dashboard URL, e.g. ``http://10.0.0.5:8265``.
        labels: free-form selectors such as ``{"cloud": "gcp", "region": "us-east1"}``.
        headers: HTTP headers for every request (auth); values may be ``${ENV}`` templates.
        cost_per_cpu_hour: price of one CPU-hour, for the ``cost`` policy.
        cost_per_gpu_hour: price of one GPU-hour, for the ``cost`` policy.
        verify_tls: verify the dashboard's certificate (a CA bundle path is accepted).

    Example:
        >>> Cluster(name="gpu-east", address="http://127.0.0.1:8265", labels={"cloud": "aws"}).name
        'gpu-east'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    address: str
    labels: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    cost_per_cpu_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cost_per_gpu_hour: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    verify_tls: bool | str = True

    def __init__(self, **data: Any) -> None:
        """Built directly (not from a fleet file): a `ConfigError` naming the key and the fix, never pydantic's error,
        whose text would repeat the offending input (a header value may be a secret)."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(_problems(e, Cluster, lambda loc: ".".join(map(str, loc)), "clusters.")) from None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"cluster name {value!r} must be 1-63 lowercase letters, digits, '-' or '_'")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            value = "http://" + value
        parsed = urlparse(value)  # before stripping '/': "http://" must not turn into "http:" with host "http"
        if parsed.username is not None or parsed.password is not None:  # never echo it: it may hold a password
            shown = parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[-1]).geturl()
            raise ValueError(f"address {shown!r} carries credentials (user:password@)")
        if _CONTROL.search(value) or any(ch.isspace() for ch in value):
            raise ValueError(f"address {value!r} contains whitespace or control characters")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"address {value!r} is not a dashboard URL like http://host:8265")
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"address {value!r} has a malformed port") from None
        if port == 0:
            raise ValueError(f"address {value!r} has a malformed port (0)")
        if parsed.query or parsed.fragment:  # Ray appends /api/... to the address: a query would end up mid-URL
            raise ValueError(f"address {value!r} has a query or fragment; a dashboard URL has neither")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():  # messages name the header, never its value
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not a valid HTTP header name")
            if _CONTROL.search(text):
                raise ValueError(f"header {name!r} has a line break or control character in its value")
        return value

    @field_validator("verify_tls")
    @classmethod
    def _verify_tls(cls, value: bool | str) -> bool | str:
        if isinstance(value, str):
            path = os.path.expanduser(value)
            if not os.path.exists(path):
                raise ValueError(
                    f"verify_tls {value!r} is neither true/false nor an existing CA bundle file or directory"
                )
            return path
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("labels must be a mapping of name to value")
        return {str(k): str(v) for k, v in value.items()}

    def resolved_headers(self) -> dict[str, str]:
        """The headers with ``${ENV}`` templates filled in from this process's environment.

        Raises:
            ConfigError: a variable is not set, or its value would break the request (a line break: header injection).
        """
        return {k: header_value(v, key=f"clusters.{self.name}.headers.{k}") for k, v in self.headers.items()}

    @property
    def plain_http_to_remote(self) -> bool:
        """Whether requests to this cluster travel unencrypted over a network: ``http://`` to a non-loopback host."""
        parsed = urlparse(self.address)
        return parsed.scheme == "http" and not is_loopback(parsed.hostname or "")

    def __repr__(self) -> str:  # never show header values, even templates
        return f"Cluster(name={self.name!r}, address={self.address!r}, labels={self.labels!r})"

    __str__ = __repr__


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("10.0.0.5")
        (True, False)
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_plain_http(cluster: Cluster) -> None:
    """Warn before rayfleet talks plain HTTP to a cluster that is not on loopback.

    Called where a connection to the cluster is first set up (probes, the job client), not when a definition is
    read, so pure placement code and config checks stay quiet. Python's default warning filter shows it once per
    process for each cluster (once per message text at this one location); ``-W always`` shows every one.
    """
    if not cluster.plain_http_to_remote:
        return
    secrets = " with its auth headers" if cluster.headers else ""
    warnings.warn(
        f"cluster {cluster.name}: the dashboard address {cluster.address} is plain HTTP to a non-loopback host; "
        f"requests{secrets} travel unencrypted. Use https:// (verify_tls: true or a CA bundle path), or reach it "
        "through a tunnel on 127.0.0.1.",
        InsecureAddressWarning,
        stacklevel=1,  # this line, not the caller's: the default filter's "once" then counts per cluster
    )


Access = Literal["service_ip", "service_dns", "url_template", "port_forward"]


class KubeRayConfig(BaseModel):
    """A Kubernetes cluster where rayfleet may create RayClusters (one entry of ``provisioners:`` in a fleet file).

    Attributes:
        name: the provisioner's name.
        context: the kubeconfig context (default: the current one); ``in_cluster`` uses the pod's service account.
        kubeconfig: the kubeconfig file (default: ``$KUBECONFIG`` or ``~/.kube/config``).
        namespace: where RayClusters are created.
        access: how rayfleet reaches a new cluster's dashboard: ``service_ip`` (``status.head.serviceIP`` and
            ``status.endpoints.dashboard``), ``service_dns`` (``<name>-head-svc.<ns>.svc``, from inside the cluster),
            ``url_template`` (an ingress or load balancer) or ``port_forward`` (a laptop).
        url_template: for ``url_template``: e.g. ``https://{name}.ray.example.com`` ({name}, {namespace}, {port}).
        max_clusters: at most this many managed clusters at once, those being created included.
        max_gpus: at most this many GPUs over all managed clusters (counted at each template's maximum).
        templates: what it may create.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["kuberay"] = "kuberay"
    context: str | None = None
    in_cluster: bool = False
    kubeconfig: str | None = None
    namespace: str = "default"
    access: Access = "service_ip"
    url_template: str | None = None
    max_clusters: int = Field(default=2, ge=0)
    max_gpus: int = Field(default=16, ge=0)
    request_timeout_s: float = Field(
        default=15.0, gt=0, allow_inf_nan=False, description="bound on one Kubernetes API call"
    )
    templates: list[ClusterTemplate] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _url_template(self) -> KubeRayConfig:
        # checked now: a template that fails to expand would fail only after a RayCluster was created
        if self.access != "url_template":
            return self
        if not self.url_template:
            raise ValueError("access 'url_template' needs url_template, e.g. https://{name}.ray.example.com")
        try:
            url = self.url_template.format(name="c", namespace="ns", port="8265")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"url_template {self.url_template!r} does not expand ({type(e).__name__}: {e}); "
                "it may use {name}, {namespace} and {port}"
            ) from None
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"url_template {self.url_template!r} does not make a URL like https://{{name}}.example.com"
            )
        return self


class LocalProvisionerConfig(BaseModel):
    """Clusters created on demand on this machine (``kind: local`` under ``provisioners:``).

    Attributes:
        name: the provisioner's name.
        directory: where the clusters it owns keep their state (default: under the local-fleet directory).
        max_clusters: at most this many at once, those being created included (each costs ~0.6 GiB and a few
            seconds to start).
        max_gpus: at most this many logical GPUs over all of them (counted at each template's maximum).
        templates: what it may create.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "local"
    kind: Literal["local"] = "local"
    directory: str | None = None
    max_clusters: int = Field(default=2, ge=0)
    max_gpus: int = Field(default=8, ge=0)
    templates: list[ClusterTemplate] = Field(default_factory=list)


def _provisioner_kind(value: Any) -> str:
    kind = value.get("kind", "kuberay") if isinstance(value, dict) else getattr(value, "kind", "kuberay")
    return str(kind)


ProvisionerConfig = Annotated[
    Annotated[KubeRayConfig, Tag("kuberay")] | Annotated[LocalProvisionerConfig, Tag("local")],
    Discriminator(_provisioner_kind),
]


class MixShape(BaseModel):
    """One request shape of the typical mix the ``fragmentation`` policy measures against (``fragmentation_mix:``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    gpu: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    accelerators: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class FleetConfig(BaseModel):
    """A fleet: its clusters and the settings that shape dispatch.

    Attributes:
        clusters: the clusters, with unique names.
        policy: the default placement policy.
        ledger: the ledger's SQLite path (default: the user's data directory).
        probe_ttl_s: how long a capacity reading is reused.
        probe_timeout_s: the bound on one capacity probe.
        hold_ttl_s: the slack beyond an attempt's start timeout during which what it holds (placed, not yet seen by a
            probe) still counts; renewed each time the attempt is seen submitted and starting.
        start_timeout_s: how long a job placed on free capacity may take to reserve its resources and start before
            it is withdrawn and placed elsewhere (placements on autoscaler headroom or a new cluster add the
            template's ``scale_up_s``).
        unknown_after_s: a job's cluster that has not answered for this long makes the job UNKNOWN.
        max_in_flight: the most submissions this process sends to one cluster at the same time (protects heads).
        fair_share: order queued jobs of the same priority by how many active jobs their owner has.
        placed_grace_s: an attempt recorded PLACED that its cluster still does not have after this long is fenced:
            a no-op job takes its submission id on the cluster (Ray refuses a second job under it), so the process
            that placed it can never start it, even if it was only paused; the attempt is FAILED and the job placed
            again at once. Shorter only costs a needless fence of a submission still on its way.
        lease_ttl_s: the dispatch loop (`Fleet.run`, ``rayfleet dispatch``) runs in one process per ledger at a time,
            under a lease it renews every turn; another loop takes over this long after the holder stopped renewing
            (died, paused, cut off), and the old holder's writes are refused from then on.
        pin_node: pin a one-bundle job to the node placement chose, through Ray's ``node:<ip>`` resource, where that
            node's address is its own (nodes on one machine share one). None (the default): only under
            ``policy: fragmentation``, whose node choice is what keeps its gain (docs/placement_quality.md).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clusters: list[Cluster] = Field(default_factory=list)
    provisioners: list[ProvisionerConfig] = Field(default_factory=list)
    name: str = "default"
    policy: Policy = "binpack"
    fragmentation_mix: list[MixShape] = Field(default_factory=list)  # empty: learned, see placement.fragmentation
    ledger: str | None = None
    probe_ttl_s: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    probe_timeout_s: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    hold_ttl_s: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    start_timeout_s: float = Field(default=3.0, gt=0)
    unknown_after_s: float = Field(default=30.0, ge=0)
    max_in_flight: int = Field(default=4, ge=1)
    fair_share: bool = False
    placed_grace_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    lease_ttl_s: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    pin_node: bool | None = None

    @field_validator("name")
    @classmethod
    def _fleet_name(cls, value: str) -> str:
        if not _LABEL_VALUE.match(value):
            raise ValueError(
                f"fleet name {value!r} must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit (it labels every cluster the fleet creates)"
            )
        return value

    @field_validator("ledger")
    @classmethod
    def _ledger(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or _CONTROL.search(value)):
            raise ValueError(f"ledger path {value!r} is empty or has control characters")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> FleetConfig:
        if not self.clusters and not self.provisioners:
            raise ValueError("the fleet has no clusters and no provisioners: list at least one cluster")
        seen: set[str] = set()
        for c in self.clusters:
            if c.name in seen:
                raise ValueError(f"cluster name {c.name!r} appears twice; names must be unique")
            seen.add(c.name)
        provisioners = [p.name for p in self.provisioners]
        for name in provisioners:
            if provisioners.count(name) > 1:
                raise ValueError(f"provisioner name {name!r} appears twice; names must be unique")
        return self

    @classmethod
    def build(cls, source: str | None = None, **data: Any) -> FleetConfig:
        """Validate a fleet definition, turning pydantic's errors into a `ConfigError` naming the key and fix."""
        try:
            return cls(**data)
        except ValidationError as e:
            raise _config_error(_problems(e, cls, lambda loc: _dotted(loc, data)), source) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FleetConfig:
        """Load a YAML fleet file; ``${ENV}`` references are filled in (header values only when used).

        Raises:
            ConfigError: the file is missing, is not valid YAML, or its content is invalid; the message names the
                file, the key and the fix.
        """
        source = str(path)
        data = read_yaml(path, "fleet file")
        if not isinstance(data, dict):
            raise ConfigError(
                "the file must be a mapping with a 'clusters:' list",
                "start the file with 'clusters:' and list each cluster with name and address",
                source=source,
            )
        data = _interpolate_tree(data, source=source, path="")
        return cls.build(source=source, **data)

    @classmethod
    def from_env(cls) -> FleetConfig | None:
        """The fleet handed to this process (a nested job) through ``RAYFLEET_FLEET`` or ``RAYFLEET_FLEET_FILE``."""
        if raw := os.environ.get(FLEET_ENV):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{FLEET_ENV} is not JSON: {e}", "set it with FleetConfig.to_env_json()") from None
            return cls.build(source=f"${FLEET_ENV}", **data)
        if path := os.environ.get(FLEET_FILE_ENV):
            return cls.from_file(path)
        return None

    def to_env_json(self) -> str:
        """This definition as JSON for a nested job, with header templates kept and literal header values left out.

        Ray shows a job's runtime_env to anyone who can reach the dashboard, so secrets must not travel there: a
        ``${TOKEN}`` template is resolved from the job's own environment.
        """
        data = self.model_dump(mode="json")
        for cluster in data["clusters"]:
            cluster["headers"] = {k: v for k, v in cluster["headers"].items() if _only_template(v)}
        return json.dumps(data, separators=(",", ":"))

    def cluster(self, name: str) -> Cluster | None:
        return next((c for c in self.clusters if c.name == name), None)


def read_yaml(path: str | os.PathLike[str], what: str, hint: str = "") -> Any:
    """A YAML file's content (``what`` names the file's kind in errors).

    Raises:
        ConfigError: the file cannot be read, or is not valid YAML (with the line and column).
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the {what}: {e.strerror}", "check the path", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        fix = "fix the YAML syntax (indentation, quotes, colons)" + (f"; {hint}" if hint else "")
        raise ConfigError(f"malformed YAML{where}: {problem}", fix, source=source) from None


def _only_template(value: str) -> bool:
    """True for a header value whose only literal part is an auth scheme: ``${TOKEN}``, ``Bearer ${TOKEN}``."""
    if not _ENV_REF.search(value):
        return False
    return _ENV_REF.sub("", value).strip() in ("", "Bearer", "Basic", "Token")


def _interpolate_tree(node: Any, *, source: str, path: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "headers" and isinstance(v, dict):
                for hk, hv in v.items():  # check the variables now (set, one line); resolve them when used
                    header_value(str(hv), key=f"{sub}.{hk}", source=source)
                out[k] = {str(hk): str(hv) for hk, hv in v.items()}
            else:
                out[k] = _interpolate_tree(v, source=source, path=sub)
        return out
    if isinstance(node, list):
        return [_interpolate_tree(v, source=source, path=f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return interpolate(node, key=path, source=source)
    return node


def _dotted(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """``('clusters', 1, 'address')`` -> ``clusters[1](name=gpu).address``: the key a user can find in the file."""
    parts: list[str] = []
    node: Any = data
    for i, item in enumerate(loc):
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and isinstance(node[item], dict) else None
            parts[-1] += f"[{item}]" + (f"(name={name})" if name else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        elif isinstance(node, dict) and item not in node and i + 1 < len(loc) and loc[i + 1] in node:
            continue  # a discriminated union's tag ("kuberay"), not a key of the file
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


# One problem of a definition: its dotted key (or ""), what is wrong, how to fix it
Problem = tuple[str, str, str]


def _problems(
    error: ValidationError, model: type[BaseModel], dotted: Callable[[tuple[Any, ...]], str], prefix: str = ""
) -> list[Problem]:
    """Every problem pydantic found, in the file's words: an unknown key with the known key it is closest to (and
    not also as that key missing), a nested cluster's own problems (`Cluster.__init__` collects them) under its key."""
    problems: list[Problem] = []
    unknown: dict[tuple[Any, ...], str] = {}  # the location of a missing key -> the unknown key that misspells it
    for err in error.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.7)
            if close:
                unknown[(*loc[:-1], close[0])] = str(loc[-1])
            fix = f"did you mean {close[0]!r}?" if close else "remove it or correct its spelling"
            if not close:
                fix += f" (the keys here: {', '.join(known)}; docs/configuration.md)" if known else ""
            problems.append((dotted(loc), "unknown key", fix))
            continue
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # a nested cluster's problems, from Cluster.__init__
            where = dotted(loc)
            problems += [(".".join(p for p in (where, key) if p), msg, hint) for key, msg, hint in cause.problems]
            continue
        msg = err["msg"].removeprefix("Value error, ")
        key = dotted(loc) or ("clusters" if "cluster" in msg else "")
        problems.append((key, msg, _hint_for(prefix + key, err["type"], msg)))
    missing = {dotted(loc) for loc in unknown}  # "address: Field required" when the file has "adress"
    return [p for p in problems if not (p[1] == "Field required" and p[0] in missing)]


def _config_error(problems: list[Problem], source: str | None = None) -> ConfigError:
    """One `ConfigError` for all of them: the one problem as it is, or each on its own line with its fix."""
    if len(problems) == 1:
        ((key, msg, hint),) = problems
        return ConfigError(msg, hint, source=source, key=key or None, problems=problems)
    lines = [f"{len(problems)} problems:"]
    lines += [f"  - {f'key {key!r}: ' if key else ''}{msg} (to fix: {hint})" for key, msg, hint in problems]
    return ConfigError("\n".join(lines), "correct each key as said", source=source, problems=problems)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where ``loc``'s last item is (``("provisioners", 0, "kuberay", "x")``: a kuberay
    provisioner's)."""
    options = [model]
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        tagged = [m for m in options if "kind" in m.model_fields and m.model_fields["kind"].default == item]
        if len(options) > 1 and tagged:  # a discriminated union's tag
            options = tagged
            continue
        if len(options) != 1 or item not in options[0].model_fields:
            return []
        options = _models_in(options[0].model_fields[item].annotation)
    return list(options[0].model_fields) if len(options) == 1 else []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _hint_for(key: str, kind: str, msg: str = "") -> str:
    if "no clusters" in msg:
        return "add 'clusters:' with at least one cluster (a name and its dashboard address)"
    if "appears twice" in msg:
        return "give every cluster and every provisioner its own name"
    if "credentials" in msg:
        return "remove user:password@ from the address; send credentials as a header (Authorization: Bearer ${TOKEN})"
    if "header" in msg or "headers" in key.split("."):
        return "header names are HTTP tokens (e.g. Authorization); values fit on one line, secrets as ${ENV} templates"
    if "verify_tls" in msg:
        return "write verify_tls: true or false (a YAML boolean, unquoted), or the path of a CA bundle that exists"
    if "url_template" in msg:
        return "give url_template like https://{name}.ray.example.com (placeholders: {name}, {namespace}, {port})"
    if "fleet name" in msg:
        return "use a name such as 'ml-prod'"
    if "ledger path" in msg:
        return "give the ledger's file path, e.g. ~/.local/share/rayfleet/ledger.db"
    if kind == "union_tag_invalid":
        return "use kind: kuberay or kind: local"
    if kind == "finite_number":
        return "give a finite number"
    if kind == "missing":
        return f"add '{key.rsplit('.', 1)[-1]}' (every cluster needs a name and a dashboard address)"
    if kind == "extra_forbidden":
        return "remove the key or correct its spelling (see docs/configuration.md)"
    if key.endswith("address"):
        return "give the dashboard URL, e.g. http://head-host:8265"
    if key.endswith("policy"):
        return f"use one of {', '.join(POLICIES)}"
    if "clusters" in key and key.rsplit(".", 1)[-1] == "name":  # not "(name=a)", which every cluster key has
        return "use a unique lowercase name such as 'gpu-east'"
    return "correct the value as the message says"
