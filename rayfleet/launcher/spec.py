"""The launcher's spec and its names: exit codes, log markers, environment variables, the report's names, and
the parsing of a gang spec (with its group) that a dispatcher ships and the launcher reads."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

RESERVATION_TIMEOUT_EXIT = 75  # the placement group was not ready within timeout_s; the command never ran
LAUNCHER_ERROR_EXIT = 76  # bad spec, or a failure before the command started; the command never ran
COMMAND_LOST_EXIT = 77  # the task running the command died; the command started
STOPPED_EXIT = 143  # stopped (Ray's stop_job) before the command started; as for SIGTERM, 128 + 15

SPEC_ENV = "RAYFLEET_GANG_SPEC"  # the gang spec (JSON), set by wrap() through runtime_env env_vars
PLACEMENT_GROUP_ENV = "RAYFLEET_PLACEMENT_GROUP_ID"  # hex id of the reserved group, set for the user's command
BUNDLE_INDEX_ENV = "RAYFLEET_BUNDLE_INDEX"  # the bundle the user's command holds, set for the user's command

MARKER = "rayfleet:"  # every line the launcher itself prints starts with this
RESERVED_MARKER = "rayfleet: reserved"
TIMEOUT_MARKER = "rayfleet: reservation timed out"
ERROR_MARKER = "rayfleet: launcher error"
# the cluster's python cannot run the launcher (no Ray in it, or it cannot reach its cluster): the command never ran,
# and the dispatcher passes the cluster over for launcher jobs
LAUNCHER_UNFIT_EXIT = 78
UNFIT_MARKER = "rayfleet: cluster unfit"
LOST_MARKER = "rayfleet: command lost"
STOPPED_MARKER = "rayfleet: stopped"
GROUP_RESERVED_MARKER = "rayfleet: group member reserved"  # this member holds its reservation; the group decides
GROUP_GO_MARKER = "rayfleet: group go"  # every member reserved: the command is about to start
GROUP_ABORTED_MARKER = "rayfleet: group aborted"  # exit 75: the group withdrew, the command never ran
ORPHANED_MARKER = "rayfleet: orphaned"  # the process that started the launcher (Ray's job supervisor) is gone

REPORT_VERSION = 1  # the names below; the dispatcher writes it into the job's metadata under REPORT_KEY
REPORT_KEY = "rayfleet.report"


def placement_group_name(submission_id: str) -> str:
    """The name of the placement group that holds an attempt's reservation."""
    return f"rayfleet:{submission_id}"


def command_task_name(submission_id: str) -> str:
    """The name of the Ray task that runs an attempt's command (it is created when the command starts)."""
    return f"rayfleet:{submission_id}:command"


PACKAGE = "rayfleet_launcher"  # the name of the package wrap() ships with a job
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_TIMEOUT_S = 30.0


class SpecError(ValueError):
    """The gang spec is malformed."""


def parse_spec(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    """Validate a gang spec (JSON text or a mapping) and return it normalized.

    Raises:
        SpecError: with what is wrong.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpecError(f"the gang spec is not JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise SpecError("the gang spec must be a JSON object")
    bundles = raw.get("bundles")
    if not isinstance(bundles, list) or not bundles:
        raise SpecError("'bundles' must be a non-empty list of {resource: amount} objects")
    clean: list[dict[str, float]] = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping):
            raise SpecError(f"bundle {i} must be an object of resource amounts")
        out: dict[str, float] = {}
        for key, value in bundle.items():
            if not isinstance(key, str) or not key:
                raise SpecError(f"bundle {i} has a resource name that is not a non-empty string: {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SpecError(f"bundle {i}: {key} must be a non-negative number, not {value!r}")
            if value > 0:
                out[key] = value
        if not out:
            raise SpecError(f"bundle {i} asks for nothing (Ray refuses an empty bundle)")
        clean.append(out)
    strategy = raw.get("strategy", "PACK")
    if strategy not in STRATEGIES:
        raise SpecError(f"'strategy' must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    timeout_s = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 0:
        raise SpecError(f"'timeout_s' must be a non-negative number of seconds, not {timeout_s!r}")
    driver = raw.get("driver_bundle", 0)
    if isinstance(driver, bool) or not isinstance(driver, int) or not 0 <= driver < len(clean):
        raise SpecError(f"'driver_bundle' must be a bundle index in [0, {len(clean)}), not {driver!r}")
    spec: dict[str, Any] = {
        "bundles": clean, "strategy": strategy, "timeout_s": float(timeout_s), "driver_bundle": driver
    }  # fmt: skip
    if raw.get("group") is not None:
        spec["group"] = parse_group(raw["group"])
    return spec


def task_options(bundle: Mapping[str, float]) -> dict[str, Any]:
    """Ray task options that ask for exactly ``bundle`` (so the task fits the bundle, and holds all of it)."""
    resources = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
    options: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    if bundle.get("memory"):
        options["memory"] = bundle["memory"]
    if resources:
        options["resources"] = resources
    return options


DEFAULT_GROUP_POLL_S = 0.2
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_group(raw: Any) -> dict[str, Any]:
    """Validate a group spec ``{"uri", "id", "member", "size", "timeout_s"[, "poll_s"]}`` and return it normalized.

    Raises:
        SpecError: with what is wrong.
    """
    if not isinstance(raw, Mapping):
        raise SpecError("'group' must be an object with uri, id, member, size and timeout_s")
    unknown = sorted(set(raw) - {"uri", "id", "member", "size", "timeout_s", "poll_s"})
    if unknown:
        raise SpecError(f"'group' has unknown keys {unknown}")
    uri, group_id, member, size = raw.get("uri"), raw.get("id"), raw.get("member"), raw.get("size")
    if not isinstance(uri, str) or not uri.strip():
        raise SpecError("'group.uri' must be a directory or an fsspec URI (e.g. s3://bucket/groups)")
    if not isinstance(group_id, str) or not _GROUP_ID.match(group_id):
        raise SpecError(f"'group.id' must be 1-128 letters, digits, '.', '_' or '-', not {group_id!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"'group.size' must be a whole number >= 1, not {size!r}")
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < size:
        raise SpecError(f"'group.member' must be an index in [0, {size}), not {member!r}")
    out: dict[str, Any] = {"uri": uri, "id": group_id, "member": member, "size": size}
    for key, default in (("timeout_s", None), ("poll_s", DEFAULT_GROUP_POLL_S)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SpecError(f"'group.{key}' must be a number of seconds > 0, not {value!r}")
        out[key] = float(value)
    return out


def is_remote_uri(uri: str) -> bool:
    """Whether ``uri`` names an fsspec location (a scheme other than ``file://``) rather than a local directory."""
    return bool(_SCHEME.match(uri)) and not uri.startswith("file://")
