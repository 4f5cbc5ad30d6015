"""A small Kubernetes API server for tests, on 127.0.0.1, that the official ``kubernetes`` client talks to.

It serves custom resources (``ray.io/v1`` ``rayclusters`` and ``rayjobs`` by default; ``register()`` adds more,
core ``/api/v1`` ones too) with the semantics that client code relies on:

- create answers 201 and fills ``metadata.uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` and a name
  from ``generateName``; a taken name is 409 ``AlreadyExists``; a bad name 422; a missing or wrong kind 400;
  ``.status`` in a create body is dropped (the status subresource owns it).
- get, list (``labelSelector`` equality- and set-based, ``fieldSelector`` on ``metadata.name``/``metadata.namespace``,
  ``limit``/``continue``), delete (200, 404; ``metadata.finalizers`` delay the removal), deletecollection.
- patch: ``application/merge-patch+json`` (the client's default for custom objects) and ``application/json-patch+json``;
  strategic merge and server-side apply answer 415 as for real custom resources. A patch or PUT of the main resource
  keeps the stored ``.status``; ``/status`` patch/PUT change only ``.status``. ``metadata.resourceVersion`` in a patch
  is a precondition (409 when stale); PUT requires it (422 without, 409 when stale). A change of anything but
  metadata and status bumps ``metadata.generation``. A no-op write changes nothing and sends no event.
- watch (``?watch=true``): newline-delimited JSON events ADDED/MODIFIED/DELETED; without ``resourceVersion`` (or "0")
  it starts with ADDED for every existing object; from a resourceVersion it replays later changes; a resourceVersion
  older than the retained history gets an ERROR event with ``code: 410`` (``Expired``), as a real API server sends it;
  ``timeoutSeconds`` ends the stream; label-selector watches turn an object leaving (entering) the selection into
  DELETED (ADDED); ``allowWatchBookmarks`` gets a BOOKMARK before a timed-out stream ends.
- ``/version``, ``/api``, ``/apis``, ``/apis/<group>``, ``/apis/<group>/<version>`` discovery.
- optional bearer-token auth (``require_token``), and a log of every request (``requests``).

Fault injection (``faults``): make the next N requests matching (method, path glob) answer a status with a Kubernetes
``Status`` body (and ``Retry-After`` for 429/503), delay responses, drop open watch streams cleanly or abruptly, and
expire every earlier resourceVersion. The method ``"WATCH"`` names watch requests, so a ``GET`` rule never eats a
watch (a test operator watches in the background).

Not supported: server-side apply, strategic merge, admission/validation against a CRD schema, owner references and
garbage collection, namespaces as objects (any namespace name is accepted), ``resourceVersionMatch``,
``sendInitialEvents``, TLS. Resource versions are increasing integers (opaque strings to clients, as in Kubernetes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import fnmatch
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
KUBE_VERSION = {
    "major": "1", "minor": "31", "gitVersion": "v1.31.0-rayfleet-test", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.0", "compiler": "gc",
    "platform": "linux/amd64",
}  # fmt: skip
DEFAULT_WATCH_TIMEOUT_S = 1800.0  # a real API server ends watches after 30-60 minutes
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes' generateName suffix
_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}  # fmt: skip


# ----- resources --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """One kind of object the server stores (a CRD, or a core type with ``group=""``)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset({"status"})
    short_names: tuple[str, ...] = ()
    validate: Callable[[dict[str, Any]], list[str]] | None = None  # errors as "field: what is wrong" (422)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``rayclusters.ray.io``, as Kubernetes names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _check_pod_group(group: Any, where: str, errors: list[str]) -> None:
    if not isinstance(group, dict):
        errors.append(f"{where}: Required value")
        return
    params = group.get("rayStartParams")
    if params is not None:
        if not isinstance(params, dict):
            errors.append(f"{where}.rayStartParams: Invalid value: must be of type object")
        else:
            errors.extend(
                f'{where}.rayStartParams.{key}: Invalid value: "{type(value).__name__}": must be of type string'
                for key, value in params.items()
                if not isinstance(value, str)
            )
    template = group.get("template")
    containers = template.get("spec", {}).get("containers") if isinstance(template, dict) else None
    if not isinstance(template, dict):
        errors.append(f"{where}.template: Required value")
    elif not isinstance(containers, list) or not containers:
        errors.append(f"{where}.template.spec.containers: Required value")


def validate_ray_cluster_spec(spec: Any, where: str = "spec") -> list[str]:
    """A subset of the RayCluster CRD's schema (KubeRay v1): what a real API server would reject with 422."""
    if not isinstance(spec, dict):
        return [f"{where}: Required value"]
    errors: list[str] = []
    _check_pod_group(spec.get("headGroupSpec"), f"{where}.headGroupSpec", errors)
    workers = spec.get("workerGroupSpecs", [])
    if not isinstance(workers, list):
        return [*errors, f"{where}.workerGroupSpecs: Invalid value: must be of type array"]
    for i, group in enumerate(workers):
        at = f"{where}.workerGroupSpecs[{i}]"
        _check_pod_group(group, at, errors)
        if isinstance(group, dict):
            if not isinstance(group.get("groupName"), str) or not group.get("groupName"):
                errors.append(f"{at}.groupName: Required value")
            errors.extend(
                f"{at}.{key}: Invalid value: must be of type integer"
                for key in ("replicas", "minReplicas", "maxReplicas", "numOfHosts")
                if key in group and (not isinstance(group[key], int) or isinstance(group[key], bool))
            )
    return errors


def _validate_raycluster(obj: dict[str, Any]) -> list[str]:
    return validate_ray_cluster_spec(obj.get("spec"))


def _validate_rayjob(obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return ["spec: Required value"]
    errors = [] if isinstance(spec.get("entrypoint", ""), str) else ["spec.entrypoint: must be of type string"]
    if "rayClusterSpec" in spec:
        errors.extend(validate_ray_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec"))
    return errors


RAYCLUSTERS = ResourceType("ray.io", "v1", "rayclusters", "RayCluster", validate=_validate_raycluster)
RAYJOBS = ResourceType("ray.io", "v1", "rayjobs", "RayJob", validate=_validate_rayjob)


class ApiError(Exception):
    """An error answer: a Kubernetes ``Status`` object with ``code``."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason or _REASONS.get(code, "Unknown")
        self.details, self.headers = details, headers or {}

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.message, self.reason, self.details)

    def response(self) -> web.Response:
        return web.json_response(self.status(), status=self.code, headers=self.headers)


def status_body(code: int, message: str, reason: str | None = None, details: dict | None = None) -> dict[str, Any]:
    """A ``Status`` object as the API server sends it with an error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _validate(rt: ResourceType, obj: dict[str, Any]) -> None:
    errors = rt.validate(obj) if rt.validate else []
    if errors:
        name = obj.get("metadata", {}).get("name")
        raise ApiError(422, f'{rt.kind}.{rt.group} "{name}" is invalid: ' + "; ".join(errors))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- selectors --------------------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_EQUALS = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(\s*({_VALUE}(?:\s*,\s*{_VALUE})*)\s*\)$")


def _split_requirements(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate over labels for a Kubernetes label selector (``a=b,c!=d,e in (f,g),!h``). Raises ApiError 400."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for requirement in _split_requirements(text or ""):
        if m := _EQUALS.match(requirement):
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m := _SET.match(requirement):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif m := _EXISTS.match(requirement):
            negated, key = m.groups()
            checks.append(lambda labels, k=key, n=bool(negated): (k in labels) != n)
        else:
            raise ApiError(400, f"unable to parse requirement: {requirement!r} in labelSelector {text!r}")
    return lambda labels: all(check(labels) for check in checks)


def parse_field_selector(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """A predicate over objects for ``metadata.name`` / ``metadata.namespace`` field selectors. Raises ApiError 400."""
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for requirement in _split_requirements(text or ""):
        m = re.match(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$", requirement)
        if not m:
            raise ApiError(400, f"invalid field selector: {requirement!r}")
        path, op, value = m.groups()
        if path not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, f'field label not supported: "{path}"')
        attribute = path.split(".")[1]
        if op == "!=":
            checks.append(lambda obj, a=attribute, v=value: obj["metadata"].get(a) != v)
        else:
            checks.append(lambda obj, a=attribute, v=value: obj["metadata"].get(a) == v)
    return lambda obj: all(check(obj) for check in checks)


# ----- patches ----------------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, list):
            doc = doc[int(token)]
        elif isinstance(doc, dict):
            doc = doc[token]
        else:
            raise KeyError(token)
    return doc


def json_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test). Raises ApiError 422 when an operation fails."""
    doc = copy.deepcopy(doc)
    for op in operations:
        try:
            kind, tokens = op["op"], _pointer(op["path"])
            if kind == "test":
                if _resolve(doc, tokens) != op["value"]:
                    raise ApiError(422, f"test operation failed at {op['path']}")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_resolve(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = _remove(doc, _pointer(op["from"]))
                doc = _add(doc, tokens, value)
            elif kind == "add":
                doc = _add(doc, tokens, copy.deepcopy(op["value"]))
            elif kind == "remove":
                doc = _remove(doc, tokens)
            elif kind == "replace":
                _resolve(doc, tokens)  # must exist
                doc = _add(_remove(doc, tokens), tokens, copy.deepcopy(op["value"]))
            else:
                raise ApiError(422, f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, f"the JSON patch {op} cannot be applied: {e!r}") from None
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise KeyError(last)
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return None
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, list):
        del parent[int(tokens[-1])]
    else:
        del parent[tokens[-1]]
    return doc


# ----- the store --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One stored change, kept for watches: ``old`` is the object before it (None for ADDED)."""

    rv: int
    type: str
    resource: ResourceType
    namespace: str | None
    new: dict[str, Any]
    old: dict[str, Any] | None


class Watcher:
    """One open watch stream: its filter and the queue its handler reads."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resource: ResourceType,
        namespace: str | None,
        labels: Callable[[dict[str, str]], bool],
        fields: Callable[[dict[str, Any]], bool],
    ) -> None:
        self.loop, self.resource, self.namespace = loop, resource, namespace
        self.labels, self.fields = labels, fields
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def matches(self, obj: dict[str, Any] | None) -> bool:
        return (
            obj is not None
            and (self.namespace is None or obj["metadata"].get("namespace") == self.namespace)
            and self.labels(obj["metadata"].get("labels") or {})
            and self.fields(obj)
        )

    def events_for(self, change: Change) -> list[dict[str, Any]]:
        """What this watch sends for a change: selections turn leaving into DELETED and entering into ADDED."""
        if change.resource != self.resource:
            return []
        was, now = self.matches(change.old), self.matches(change.new)
        if change.type == "DELETED":
            kind = "DELETED" if now or was else None
        elif was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            kind = None
        return [{"type": kind, "object": change.new}] if kind else []

    def push(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


_DROP_CLEAN, _DROP_ABRUPT = object(), object()


class Store:
    """Objects by (resource, namespace, name), a global resourceVersion, and the recent history for watches."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[ResourceType, str | None, str], dict[str, Any]] = {}
        self.rv = 100  # never "0" in a list: to a watch, resourceVersion "0" means "any" (start with ADDEDs)
        self.history: deque[Change] = deque()
        self.history_limit = history_limit
        self.compacted = 0  # a watch from a resourceVersion below this one is answered 410
        self.watchers: set[Watcher] = set()

    # -- helpers

    def _record(self, kind: str, rt: ResourceType, ns: str | None, new: dict, old: dict | None) -> None:
        change = Change(self.rv, kind, rt, ns, copy.deepcopy(new), copy.deepcopy(old))
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.compacted = self.history.popleft().rv
        for watcher in list(self.watchers):
            watcher.push(change)

    def _bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((rt, ns, name))
        if obj is None:
            raise ApiError(404, f'{rt.qualified} "{name}" not found', details={"name": name, "group": rt.group,
                                                                             "kind": rt.plural})  # fmt: skip
        return obj

    def compact(self) -> str:
        """Forget the history: every resourceVersion older than the current one is now too old to watch from."""
        with self.lock:
            self.history.clear()
            self.compacted = self.rv
            return str(self.rv)

    # -- operations (each returns copies)

    def create(self, rt: ResourceType, ns: str | None, body: Any, dry_run: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body is not a JSON object")
        if body.get("apiVersion") != rt.api_version or body.get("kind") != rt.kind:
            raise ApiError(
                400,
                f"the API version in the data ({body.get('apiVersion')}) and kind ({body.get('kind')}) do not match "
                f"the expected {rt.api_version} {rt.kind}",
            )
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata is not an object")
        if meta.get("namespace") not in (None, "", ns):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        with self.lock:
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise ApiError(422, f"{rt.kind}.{rt.group} is invalid: metadata.name: Required value: name or "
                                   "generateName is required")  # fmt: skip
                for _ in range(100):
                    meta["name"] = prefix + "".join(random.choice(_GENERATE_CHARS) for _ in range(5))
                    if (rt, ns, meta["name"]) not in self.objects:
                        break
            name = meta["name"]
            if len(name) > 253 or not _NAME.match(name):
                raise ApiError(
                    422,
                    f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.name: Invalid value: "{name}": a lowercase '
                    "RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                )
            if (rt, ns, name) in self.objects:
                raise ApiError(
                    409,
                    f'{rt.qualified} "{name}" already exists',
                    reason="AlreadyExists",
                    details={"name": name, "group": rt.group, "kind": rt.plural},
                )
            for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
                meta.pop(key, None)
            if ns is not None:
                meta["namespace"] = ns
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            if rt.has_status:
                obj.pop("status", None)
            _validate(rt, obj)
            if dry_run:
                meta["resourceVersion"] = str(self.rv)
                return copy.deepcopy(obj)
            self._bump(obj)
            self.objects[(rt, ns, name)] = obj
            self._record("ADDED", rt, ns, obj, None)
            return copy.deepcopy(obj)

    def get(self, rt: ResourceType, ns: str | None, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._get(rt, ns, name))

    def list(
        self,
        rt: ResourceType,
        ns: str | None,
        labels: Callable[[dict[str, str]], bool] = lambda _: True,
        fields: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> tuple[list[dict[str, Any]], str]:
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for (r, n, _), obj in sorted(self.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
                if r == rt and (ns is None or n == ns) and labels(obj["metadata"].get("labels") or {}) and fields(obj)
            ]
            return items, str(self.rv)

    def write(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        change: Callable[[dict[str, Any]], Any],
        subresource: str | None,
        require_rv: bool,
    ) -> dict[str, Any]:
        """Apply ``change`` (old object -> proposed object) with Kubernetes' rules for the main resource or /status."""
        with self.lock:
            old = self._get(rt, ns, name)
            proposed = change(copy.deepcopy(old))
            if not isinstance(proposed, dict) or not isinstance(proposed.get("metadata", {}), dict):
                raise ApiError(400, "the object is not a JSON object with metadata")
            pmeta = proposed.get("metadata") or {}
            if pmeta.get("name") not in (None, name):
                raise ApiError(400, f"the name of the object ({pmeta.get('name')}) does not match the name on the "
                               f"URL ({name})")  # fmt: skip
            wanted_rv = pmeta.get("resourceVersion")
            if require_rv and not wanted_rv:
                raise ApiError(422, f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.resourceVersion: Invalid '
                               "value: 0x0: must be specified for an update")  # fmt: skip
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    details={"name": name, "group": rt.group, "kind": rt.plural},
                )
            if subresource == "status":
                new = copy.deepcopy(old)
                if "status" in proposed:
                    new["status"] = proposed["status"]
                else:
                    new.pop("status", None)
            else:
                new = copy.deepcopy(proposed)
                new["apiVersion"], new["kind"] = rt.api_version, rt.kind
                meta = new.setdefault("metadata", {})
                for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                    if key in old["metadata"]:
                        meta[key] = old["metadata"][key]
                    else:
                        meta.pop(key, None)
                if rt.has_status:
                    if "status" in old:
                        new["status"] = old["status"]
                    else:
                        new.pop("status", None)
                body = {k: v for k, v in new.items() if k not in ("metadata", "status", "apiVersion", "kind")}
                old_body = {k: v for k, v in old.items() if k not in ("metadata", "status", "apiVersion", "kind")}
                if body != old_body:
                    meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
                    _validate(rt, new)
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return copy.deepcopy(old)  # a no-op: no new resourceVersion, no event
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                return self._remove(rt, ns, name, new)
            self._bump(new)
            self.objects[(rt, ns, name)] = new
            self._record("MODIFIED", rt, ns, new, old)
            return copy.deepcopy(new)

    def _remove(self, rt: ResourceType, ns: str | None, name: str, last: dict[str, Any]) -> dict[str, Any]:
        old = self.objects.pop((rt, ns, name))
        self._bump(last)
        self._record("DELETED", rt, ns, last, old)
        return copy.deepcopy(last)

    def delete(self, rt: ResourceType, ns: str | None, name: str) -> tuple[dict[str, Any], bool]:
        """Delete now, or (with finalizers) mark for deletion. Returns the object and whether it is gone."""
        with self.lock:
            old = self._get(rt, ns, name)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(old), False
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                self._bump(new)
                self.objects[(rt, ns, name)] = new
                self._record("MODIFIED", rt, ns, new, old)
                return copy.deepcopy(new), False
            return self._remove(rt, ns, name, copy.deepcopy(old)), True

    def replay(self, watcher: Watcher, since: str | None) -> list[dict[str, Any]] | None:
        """Register ``watcher`` and return the events it starts with; None when ``since`` is too old (410)."""
        with self.lock:
            if since in (None, "", "0"):
                items, _ = self.list(watcher.resource, watcher.namespace, watcher.labels, watcher.fields)
                events = [{"type": "ADDED", "object": obj} for obj in items]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(400, f"invalid resourceVersion {since!r}") from None
                if start < self.compacted:
                    return None
                events = [e for change in self.history if change.rv > start for e in watcher.events_for(change)]
            self.watchers.add(watcher)
            return events


# ----- fault injection --------------------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """Requests matching (method, path) get ``status`` (or a ``delay`` first); ``times=None`` means until cleared."""

    method: str
    path: str | re.Pattern[str]
    status: int | None = None
    delay: float = 0.0
    times: int | None = 1
    message: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method not in ("*", method):
            return False
        if isinstance(self.path, re.Pattern):
            return bool(self.path.search(path))
        return fnmatch.fnmatchcase(path, self.path)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def response(self, method: str, path: str) -> web.Response:
        assert self.status is not None
        headers = dict(self.headers)
        if self.retry_after is not None and not any(k.lower() == "retry-after" for k in headers):
            headers["Retry-After"] = f"{self.retry_after:g}"  # an explicit header wins
        body = self.body or status_body(
            self.status,
            self.message or _default_message(self.status, method, path),
            self.reason,
            {"retryAfterSeconds": int(self.retry_after)} if self.retry_after is not None else None,
        )
        return web.json_response(body, status=self.status, headers=headers)


def _default_message(status: int, method: str, path: str) -> str:
    if status == 403:
        parts = [p for p in path.split("/") if p]
        verb = {"GET": "get", "WATCH": "watch", "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())  # fmt: skip
        plural = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "namespaces"), parts[-1] if parts else "")
        return f'forbidden: User "system:serviceaccount:default:rayfleet" cannot {verb} resource at {path} ({plural})'
    if status == 429:
        return "Too many requests, please try again later."
    if status == 409:
        return "Operation cannot be fulfilled: the object has been modified (injected)"
    return f"injected fault: {status} for {method} {path}"


class Faults:
    """The tests' handle on misbehaviour. Thread-safe; the server consults it before every request."""

    def __init__(self, server: KubeAPIServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self.rules: list[FaultRule] = []

    def fail(
        self,
        method: str,
        path: str | re.Pattern[str],
        status: int,
        *,
        times: int | None = 1,
        message: str | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> FaultRule:
        """Make the next ``times`` requests (None: all) matching ``method`` and the path glob answer ``status``.

        ``method`` is an HTTP method, ``"WATCH"`` for watch requests, or ``"*"``. ``path`` is an fnmatch glob over the
        URL path without the query (``*`` crosses ``/``), or a compiled regex (searched). The body is a Kubernetes
        ``Status`` with ``reason`` (default from the status: 409 Conflict, 403 Forbidden, 429 TooManyRequests, ...).
        A 429 or 503 with ``retry_after`` carries the ``Retry-After`` header.
        """
        if retry_after is None and status == 429 and not any(k.lower() == "retry-after" for k in headers or {}):
            retry_after = 1
        rule = FaultRule(method.upper(), path, status=status, times=times, message=message, reason=reason,
                         retry_after=retry_after, body=body, headers=dict(headers or {}))  # fmt: skip
        with self._lock:
            self.rules.append(rule)
        return rule

    def delay(self, method: str, path: str | re.Pattern[str], seconds: float, *, times: int | None = None) -> FaultRule:
        """Hold matching requests ``seconds`` before answering them (a slow API server)."""
        rule = FaultRule(method.upper(), path, delay=seconds, times=times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def drop_watches(self, *, abrupt: bool = False) -> int:
        """End every open watch stream: cleanly (the chunked stream ends) or abruptly (the connection is reset).

        Returns how many were open. A client without ``timeout_seconds`` resumes a cleanly ended watch from its last
        resourceVersion; an abrupt end raises ``urllib3.exceptions.ProtocolError`` in the client's iteration.
        """
        with self._server.store.lock:
            watchers = list(self._server.store.watchers)
        for watcher in watchers:
            watcher.push(_DROP_ABRUPT if abrupt else _DROP_CLEAN)
        return len(watchers)

    def expire_resource_versions(self) -> str:
        """Compact the history: a watch from any earlier resourceVersion now gets 410 Expired. Returns the current."""
        return self._server.store.compact()

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _take(self, method: str, path: str) -> tuple[float, FaultRule | None]:
        """The total delay and the failing rule (if any) for a request; consumes one use of each matched rule."""
        delay, failing = 0.0, None
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.status is None:
                    rule.hits += 1
                    delay += rule.delay
                elif failing is None:
                    rule.hits += 1
                    failing = rule
            self.rules = [r for r in self.rules if not r.exhausted]
        return delay, failing


# ----- the server -------------------------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the server saw it (``method`` is WATCH for watches) and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int | None = None


class KubeAPIServer:
    """The API server, in a thread of its own with its own event loop. Use as a context manager or start()/stop().

    Example:
        >>> with KubeAPIServer() as api:                                         # doctest: +SKIP
        ...     objects = kubernetes.client.CustomObjectsApi(api.api_client())
        ...     objects.create_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", body)
    """

    def __init__(
        self,
        resources: Iterable[ResourceType] = (RAYCLUSTERS, RAYJOBS),
        *,
        host: str = "127.0.0.1",
        history_limit: int = 10_000,
    ) -> None:
        self.host = host
        self.port: int | None = None
        self.store = Store(history_limit)
        self.faults = Faults(self)
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in resources:
            self.register(rt)
        self.require_token: str | None = None
        self.default_watch_timeout = DEFAULT_WATCH_TIMEOUT_S
        self.requests: list[RequestRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._clients: list[Any] = []

    # -- lifecycle

    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the API server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> KubeAPIServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="k8s-test-apiserver", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None:
            return
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self.faults.drop_watches()
        if self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server: plain HTTP, no auth, no proxy."""
        from kubernetes import client

        configuration = client.Configuration(host=self.url, proxy="", no_proxy="127.0.0.1,localhost")
        if self.require_token:
            configuration.api_key = {"BearerToken": self.require_token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` for this server (closed when the server stops)."""
        from kubernetes import client

        api_client = client.ApiClient(self.configuration())
        self._clients.append(api_client)
        return api_client

    def kubeconfig(
        self, path: str | Path, *, context: str = "test", namespace: str = "default", token: str | None = None
    ) -> Path:
        """Write a kubeconfig whose ``context`` (also the current one) points here; returns the path."""
        user: dict[str, Any] = {"token": token} if token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def objects(self, plural: str = "rayclusters", namespace: str | None = None, group: str = "ray.io",
                version: str = "v1") -> list[dict[str, Any]]:  # fmt: skip
        """The stored objects (copies), read directly, not through HTTP."""
        return self.store.list(self.types[(group, version, plural)], namespace)[0]

    def requests_matching(self, method: str = "*", path: str = "*") -> list[RequestRecord]:
        """Logged requests whose method (``WATCH`` for watches) and path match (``path`` is a glob)."""
        method = method.upper()
        return [r for r in list(self.requests) if method in ("*", r.method) and fnmatch.fnmatchcase(r.path, path)]

    @property
    def active_watches(self) -> int:
        with self.store.lock:
            return len(self.store.watchers)

    # -- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        is_watch = request.method == "GET" and query.get("watch", "").lower() in ("true", "1")
        method = "WATCH" if is_watch else request.method
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        record = RequestRecord(method, request.path, query, dict(request.headers), body)
        self.requests.append(record)
        delay, rule = self.faults._take(method, request.path)
        if delay and self._closing is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # a delay ends early when the server stops
                await asyncio.wait_for(self._closing.wait(), timeout=delay)
        if rule is not None:
            response: web.StreamResponse = rule.response(method, request.path)
        elif self.require_token and request.headers.get("Authorization") != f"Bearer {self.require_token}":
            response = ApiError(401, "Unauthorized").response()
        else:
            try:
                response = await self._route(request, method, query, body)
            except ApiError as e:
                response = e.response()
        record.status = response.status
        return response

    async def _route(self, request: web.Request, method: str, query: dict[str, str], body: Any) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response(KUBE_VERSION)
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:1] == ["apis"] and len(parts) == 2:
            group = next((g for g in self._group_list()["groups"] if g["name"] == parts[1]), None)
            if group is None:
                raise ApiError(404, "the server could not find the requested resource")
            return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
        if (parts[:1] == ["apis"] and len(parts) == 3) or (parts[:1] == ["api"] and len(parts) == 2):
            group, version = (parts[1], parts[2]) if parts[0] == "apis" else ("", parts[1])
            return web.json_response(self._resource_list(group, version))
        if parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        rt = self.types.get((group, version, plural))
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise ApiError(404, "the server could not find the requested resource")
        if rt.namespaced and namespace is None and not (name is None and method in ("GET", "WATCH")):
            raise ApiError(404, "the server could not find the requested resource")
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, "the server could not find the requested resource")
        if name is None:
            return await self._collection(request, rt, namespace, method, query, body)
        return self._item(request, rt, namespace, name, sub, method, query, body)

    async def _collection(
        self, request: web.Request, rt: ResourceType, ns: str | None, method: str, query: dict[str, str], body: Any
    ) -> web.StreamResponse:
        if method == "WATCH":
            return await self._watch(request, rt, ns, query)
        if method == "GET":
            items, rv = self.store.list(
                rt,
                ns,
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector")),
            )
            meta: dict[str, Any] = {"resourceVersion": rv}
            if query.get("continue"):
                after = json.loads(base64.urlsafe_b64decode(query["continue"]))
                items = [
                    i for i in items if (i["metadata"].get("namespace") or "", i["metadata"]["name"]) > tuple(after)
                ]
            limit = int(query.get("limit") or 0)
            if limit and len(items) > limit:
                items, last = items[:limit], items[limit - 1]["metadata"]
                token = json.dumps([last.get("namespace") or "", last["name"]]).encode()
                meta["continue"] = base64.urlsafe_b64encode(token).decode()
                meta["remainingItemCount"] = 0  # not tracked; present so clients see a paginated answer
            return web.json_response({"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": meta,
                                      "items": items})  # fmt: skip
        if method == "POST":
            dry_run = query.get("dryRun") == "All"
            return web.json_response(self.store.create(rt, ns, body, dry_run=dry_run), status=201)
        if method == "DELETE":
            items, _ = self.store.list(
                rt,
                ns,
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector")),
            )
            deleted = []
            for item in items:
                with contextlib.suppress(ApiError):
                    deleted.append(
                        self.store.delete(rt, item["metadata"].get("namespace"), item["metadata"]["name"])[0]
                    )
            return web.json_response({"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": {},
                                      "items": deleted})  # fmt: skip
        raise ApiError(405, f"method {method} is not allowed on {request.path}")

    def _item(
        self,
        request: web.Request,
        rt: ResourceType,
        ns: str | None,
        name: str,
        sub: str | None,
        method: str,
        query: dict[str, str],
        body: Any,
    ) -> web.StreamResponse:
        if method == "GET":
            return web.json_response(self.store.get(rt, ns, name))
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "the request body is not a JSON object")
            if sub is None and (body.get("apiVersion"), body.get("kind")) != (rt.api_version, rt.kind):
                raise ApiError(400, f"the API version and kind of the body must be {rt.api_version} {rt.kind}")
            return web.json_response(self.store.write(rt, ns, name, lambda _old: body, sub, require_rv=True))
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type == MERGE_PATCH:
                if not isinstance(body, dict):
                    raise ApiError(400, "a merge patch must be a JSON object")
                return web.json_response(self.store.write(rt, ns, name, lambda old: merge_patch(old, body), sub, False))
            if content_type == JSON_PATCH:
                if not isinstance(body, list):
                    raise ApiError(400, "a JSON patch must be a list of operations")
                return web.json_response(self.store.write(rt, ns, name, lambda old: json_patch(old, body), sub, False))
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                           f"{JSON_PATCH}, {MERGE_PATCH} (got {content_type!r})")  # fmt: skip
        if method == "DELETE" and sub is None:
            obj, gone = self.store.delete(rt, ns, name)
            if gone:
                details = {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj["metadata"]["uid"]}
                return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                          "details": details})  # fmt: skip
            return web.json_response(obj)
        raise ApiError(405, f"method {method} is not allowed on {request.path}")

    async def _watch(
        self, request: web.Request, rt: ResourceType, ns: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        assert self._loop is not None
        watcher = Watcher(
            self._loop,
            rt,
            ns,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        initial = self.store.replay(watcher, query.get("resourceVersion"))
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if initial is None:
                gone = status_body(410, f"too old resource version: {query.get('resourceVersion')} "
                                   f"({self.store.compacted})", "Expired")  # fmt: skip
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                await response.write_eof()
                return response
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), timeout=min(remaining, 1.0))
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        return response  # the client went away (the finally unregisters the watcher)
                    continue
                if item is _DROP_ABRUPT:
                    self._unwatch(watcher)  # before the client can see the reset: see _unwatch
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if item is _DROP_CLEAN:
                    break
                for event in watcher.events_for(item):
                    await response.write(json.dumps(event).encode() + b"\n")
            else:
                self._unwatch(watcher)
                if bookmarks:
                    mark = {"apiVersion": rt.api_version, "kind": rt.kind,
                            "metadata": {"resourceVersion": str(self.store.rv)}}  # fmt: skip
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
            self._unwatch(watcher)  # (a clean drop comes here by the break) before the end of the stream is sent
            await response.write_eof()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the client closed the stream (Watch.stop(), a timeout on its side)
        finally:
            self._unwatch(watcher)  # every other way out: the client went away, an error
        return response

    def _unwatch(self, watcher: Watcher) -> None:
        """Take a watch out of ``active_watches`` (and out of reach of events and drops); idempotent.

        A stream that ends must leave the set *before* its last bytes (the end of the chunked stream, the reset, the
        BOOKMARK) go out: a client that has seen its watch end, and a test that then waits for ``active_watches`` to
        count a new watch or drops "every open watch", must never still find the finished one there.
        """
        with self.store.lock:
            self.store.watchers.discard(watcher)

    # -- discovery

    def _group_list(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for rt in self.types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                    "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
                }
                for group, versions in groups.items()
            ],
        }

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        types = [rt for rt in self.types.values() if (rt.group, rt.version) == (group, version)]
        if not types and group:
            raise ApiError(404, "the server could not find the requested resource")
        verbs = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
        resources: list[dict[str, Any]] = []
        for rt in types:
            resources.append({"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": verbs, "shortNames": list(rt.short_names)})  # fmt: skip
            for sub in sorted(rt.subresources):
                resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": ["get", "patch", "update"]})  # fmt: skip
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".strip("/"),
                "resources": resources}  # fmt: skip
