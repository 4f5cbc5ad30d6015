"""`Resources` and `Gang`: frozen, validated requests of CPU, GPU, memory, custom keys and allowed GPU models.

Ray names resources ``CPU``, ``GPU``, ``memory`` (bytes) and any custom key; a node with GPUs of a known model carries
``accelerator_type:<model>`` = 1, which tasks request at 0.001. A request may allow several models
(``accelerators={"A100", "H100"}``): that cannot be said to Ray in one key, so placement chooses the model and the
submission carries the concrete key (see `Resources.entrypoint_kwargs`). A `Gang` is several bundles that must be
reserved together, with the meaning of a Ray placement group; one model is chosen for all its GPU bundles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from rayfleet.errors import InvalidResourcesError

ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_REQUEST = 0.001  # Ray's convention for requesting a node's accelerator_type:<model> resource
RESERVED_KEYS = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
EPSILON = 1e-9
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement-group strategies

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*(:[A-Za-z0-9_.\-]+)?$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = MappingProxyType(
    {
        "": 1,
        "B": 1,
        "K": 1000,
        "KB": 1000,
        "M": 1000**2,
        "MB": 1000**2,
        "G": 1000**3,
        "GB": 1000**3,
        "T": 1000**4,
        "TB": 1000**4,
        "KI": 1024,
        "KIB": 1024,
        "MI": 1024**2,
        "MIB": 1024**2,
        "GI": 1024**3,
        "GIB": 1024**3,
        "TI": 1024**4,
        "TIB": 1024**4,
        "P": 1000**5,
        "PB": 1000**5,
        "PI": 1024**5,
        "PIB": 1024**5,
    }
)


def parse_memory(value: int | float | str) -> int:
    """Parse a memory amount into bytes.

    Args:
        value: bytes as a number, or a string such as ``"4GiB"``, ``"512MiB"``, ``"2GB"``, ``"1.5G"``.

    Returns:
        The number of bytes, rounded down.

    Raises:
        InvalidResourcesError: the value is negative, NaN or not a recognised amount.

    Example:
        >>> parse_memory("4GiB")
        4294967296
    """
    if isinstance(value, bool):
        raise InvalidResourcesError(f"memory={value!r} is not an amount", "give bytes or a string like '4GiB'")
    if isinstance(value, int | float):
        number, factor = float(value), 1
    else:
        match = _MEMORY.match(str(value))
        if not match:
            raise InvalidResourcesError(
                f"memory={value!r} is not a recognised amount",
                "give bytes as a number, or a string such as '512MiB', '4GiB' or '2GB'",
            )
        number, factor = float(match.group(1)), _UNITS[(match.group(2) or "").upper()]
    if math.isnan(number) or math.isinf(number) or number < 0:
        raise InvalidResourcesError(f"memory={value!r} must be a finite amount >= 0", "give e.g. memory='4GiB'")
    return int(number * factor)


def _check_amount(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r} is not a number")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if value < 0:
        raise ValueError(f"{name}={value!r} must be >= 0")
    return value


class Resources(BaseModel):
    """What one job (or one bundle of a gang) needs on a single node.

    Attributes:
        cpu: logical CPUs (may be fractional).
        gpu: logical GPUs; fractions are allowed up to 1, above 1 only whole numbers (Ray's rule).
        memory: bytes; accepts ``"4GiB"``-style strings.
        custom: other Ray resources by their Ray name, e.g. ``{"TPU": 4}``.
        accelerators: allowed GPU models, e.g. ``{"A100", "H100"}``; empty means any (or none).

    Example:
        >>> r = Resources(cpu=2, gpu=1, memory="8GiB", accelerators={"A100", "H100"})
        >>> r.gpu, r.memory
        (1.0, 8589934592)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = 0.0
    gpu: float = 0.0
    memory: int = 0
    custom: Mapping[str, float] = Field(default_factory=dict)
    accelerators: frozenset[str] = frozenset()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            )
            raise InvalidResourcesError(
                f"invalid resources: {problems}",
                "use finite amounts >= 0; GPUs above 1 must be whole; custom keys look like 'TPU' or 'vendor:thing'; "
                "GPU models go in accelerators={'A100'}",
            ) from None

    @field_validator("cpu", "gpu", mode="before")
    @classmethod
    def _amount(cls, value: Any, info: Any) -> float:
        return _check_amount(info.field_name, value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        try:
            return parse_memory(value)
        except InvalidResourcesError as e:
            raise ValueError(e.message) from None

    @field_validator("custom", mode="before")
    @classmethod
    def _custom(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, Mapping):
            raise ValueError(f"custom={value!r} must be a mapping of resource name to amount")
        out: dict[str, float] = {}
        for key, amount in value.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise ValueError(f"resource key {key!r} is malformed (letters, digits, '_', '-', '.', one ':')")
            if key in RESERVED_KEYS:
                raise ValueError(f"resource key {key!r} has its own field: use cpu=, gpu= or memory=")
            if key.startswith(ACCELERATOR_PREFIX):
                raise ValueError(f"{key!r}: say GPU models with accelerators={{{key[len(ACCELERATOR_PREFIX) :]!r}}}")
            amount = _check_amount(key, amount)
            if amount > 0:
                out[key] = amount
        return dict(sorted(out.items()))

    @field_validator("custom", mode="after")
    @classmethod
    def _read_only(cls, value: Mapping[str, float]) -> Mapping[str, float]:
        return MappingProxyType(dict(value))  # frozen all the way down: the hash must not change

    @field_validator("accelerators", mode="before")
    @classmethod
    def _accelerators(cls, value: Any) -> frozenset[str]:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, Iterable):  # else a TypeError would escape InvalidResourcesError
            raise ValueError(f"accelerators={value!r} must be a set of GPU models such as {{'A100', 'H100'}}")
        models = frozenset(str(v).strip() for v in value)
        bad = sorted(m for m in models if not _MODEL.match(m))
        if bad:
            raise ValueError(f"accelerator model(s) {bad} are malformed (e.g. 'A100', 'H100', 'L4')")
        return models

    @model_validator(mode="after")
    def _ray_rules(self) -> Resources:
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError(f"gpu={self.gpu} is fractional above 1; Ray allows fractions only up to 1")
        if self.accelerators and self.gpu == 0:
            raise ValueError("accelerators were given without gpu; request gpu>=1 (or a fraction) as well")
        return self

    def __hash__(self) -> int:
        return hash((self.cpu, self.gpu, self.memory, tuple(self.custom.items()), self.accelerators))

    # ----- construction -------------------------------------------------------------------------------------------

    @classmethod
    def of(cls, value: Resources | Mapping[str, Any] | None) -> Resources:
        """Accept a `Resources`, a mapping of its fields, or ``None`` (nothing)."""
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise InvalidResourcesError(f"resources={value!r} is not a Resources or a mapping", "pass Resources(cpu=1)")

    def copy_with(self, **overrides: Any) -> Resources:
        """A validated copy with some fields replaced (``model_copy`` would skip validation)."""
        return Resources(**{**self.model_dump(), **overrides})

    @field_serializer("custom")
    def _dump_custom(self, value: Mapping[str, float]) -> dict[str, float]:
        return dict(value)

    # ----- arithmetic ---------------------------------------------------------------------------------------------

    def __add__(self, other: Resources) -> Resources:
        keys = self.custom.keys() | other.custom.keys()
        return Resources(
            cpu=self.cpu + other.cpu,
            gpu=self.gpu + other.gpu,
            memory=self.memory + other.memory,
            custom={k: self.custom.get(k, 0.0) + other.custom.get(k, 0.0) for k in keys},
            accelerators=self.accelerators | other.accelerators,
        )

    def __mul__(self, n: int) -> Resources:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidResourcesError(f"cannot multiply resources by {n!r}", "multiply by a whole number >= 0")
        return Resources(
            cpu=self.cpu * n,
            gpu=self.gpu * n,
            memory=self.memory * n,
            custom={k: v * n for k, v in self.custom.items()},
            accelerators=self.accelerators,
        )

    __rmul__ = __mul__

    @property
    def is_empty(self) -> bool:
        return self.cpu == 0 and self.gpu == 0 and self.memory == 0 and not self.custom

    # ----- Ray's view ---------------------------------------------------------------------------------------------

    def to_ray(self, accelerator: str | None = None) -> dict[str, float]:
        """This request as Ray resource names, with one concrete accelerator model if given.

        Example:
            >>> Resources(cpu=1, gpu=1, accelerators={"A100"}).to_ray("A100")
            {'CPU': 1.0, 'GPU': 1.0, 'accelerator_type:A100': 0.001}
        """
        out: dict[str, float] = {}
        if self.cpu:
            out["CPU"] = self.cpu
        if self.gpu:
            out["GPU"] = self.gpu
        if self.memory:
            out["memory"] = float(self.memory)
        out.update(self.custom)
        if accelerator is not None:
            out[ACCELERATOR_PREFIX + accelerator] = ACCELERATOR_REQUEST
        return out

    def fits(self, free: Mapping[str, float], accelerator: str | None = None) -> bool:
        """Whether this request fits in one node's free resources (Ray names), with the given model if any.

        With ``accelerators`` set and no model given, any allowed model the node has will do.
        """
        if self.accelerators and accelerator is None:
            return any(self.fits(free, model) for model in sorted(self.accelerators))
        return all(free.get(key, 0.0) + EPSILON >= amount for key, amount in self.to_ray(accelerator).items())

    def entrypoint_kwargs(self, accelerator: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``JobSubmissionClient.submit_job`` that reserve this request for the entrypoint."""
        if self.accelerators and accelerator not in self.accelerators:
            raise InvalidResourcesError(
                f"accelerator {accelerator!r} is not one of the allowed models {sorted(self.accelerators)}",
                "let placement choose the model",
            )
        kwargs: dict[str, Any] = {}
        if self.cpu:
            kwargs["entrypoint_num_cpus"] = self.cpu
        if self.gpu:
            kwargs["entrypoint_num_gpus"] = self.gpu
        if self.memory:
            kwargs["entrypoint_memory"] = self.memory
        custom = dict(self.custom)
        if accelerator is not None:
            custom[ACCELERATOR_PREFIX + accelerator] = ACCELERATOR_REQUEST
        if custom:
            kwargs["entrypoint_resources"] = custom
        return kwargs

    def describe(self) -> str:
        """A short human form, e.g. ``2 CPU, 1 GPU (A100|H100), 4.0 GiB``."""
        parts = []
        if self.cpu:
            parts.append(f"{self.cpu:g} CPU")
        if self.gpu:
            models = f" ({'|'.join(sorted(self.accelerators))})" if self.accelerators else ""
            parts.append(f"{self.gpu:g} GPU{models}")
        if self.memory:
            parts.append(format_bytes(self.memory))
        parts += [f"{v:g} {k}" for k, v in self.custom.items()]
        return ", ".join(parts) or "nothing"


class Gang(BaseModel):
    """Bundles that must be reserved together, at the same time, in one cluster (a Ray placement group).

    Strategies have Ray's meanings: ``STRICT_PACK`` puts every bundle on one node; ``STRICT_SPREAD`` puts each on a
    different node; ``PACK`` (Ray's default) uses as few nodes as it can; ``SPREAD`` uses distinct nodes where it can.
    Lowercase names are accepted and stored uppercase. All GPU bundles must allow the same set of models, so that one
    model is chosen for the whole gang.

    Attributes:
        bundles: what each member needs on its node; at least one, none empty.
        strategy: one of `STRATEGIES`.

    Example:
        >>> g = Gang.of(2, Resources(cpu=1, gpu=1), strategy="strict_spread")
        >>> g.strategy, len(g.bundles), g.total.gpu
        ('STRICT_SPREAD', 2, 2.0)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bundles: tuple[Resources, ...]
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            errors = e.errors()
            # validators raise InvalidResourcesError with a specific hint; pass the first one on unchanged
            for err in errors:
                cause = (err.get("ctx") or {}).get("error")
                if isinstance(cause, InvalidResourcesError):
                    raise InvalidResourcesError(cause.message, cause.hint) from None
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg'].removeprefix('Value error, ')}"
                for err in errors
            )
            raise InvalidResourcesError(
                f"invalid gang: {problems}",
                "give Gang(bundles=[Resources(...), ...], strategy='PACK'), or Gang.of(n, Resources(...))",
            ) from None

    @field_validator("bundles", mode="before")
    @classmethod
    def _bundles(cls, value: Any) -> tuple[Resources, ...]:
        if isinstance(value, Resources | Mapping | str) or not isinstance(value, Iterable):
            raise InvalidResourcesError(
                f"bundles={value!r} is not a list of bundles", "give bundles=[Resources(cpu=1), ...]"
            )
        bundles = []
        for i, bundle in enumerate(value):
            try:
                bundles.append(Resources.of(bundle))
            except InvalidResourcesError as e:
                raise InvalidResourcesError(f"bundle {i}: {e.message}", e.hint) from None
        if not bundles:
            raise InvalidResourcesError("a gang needs at least one bundle", "give bundles=[Resources(cpu=1), ...]")
        for i, bundle in enumerate(bundles):
            if bundle.is_empty:  # Ray rejects a placement group with an empty bundle
                raise InvalidResourcesError(
                    f"bundle {i} asks for nothing", "give every bundle some CPU, GPU, memory or a custom resource"
                )
        gpu_sets = {bundle.accelerators for bundle in bundles if bundle.gpu > 0}
        if len(gpu_sets) > 1:
            shown = ", ".join(sorted("{" + ", ".join(sorted(s)) + "}" if s else "any model" for s in gpu_sets))
            raise InvalidResourcesError(
                f"the GPU bundles of a gang allow different GPU models ({shown}); one model is chosen per gang",
                "give every GPU bundle the same accelerators, e.g. accelerators={'A100', 'H100'}",
            )
        return tuple(bundles)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> str:
        name = value.upper() if isinstance(value, str) else value
        if name not in STRATEGIES:
            raise InvalidResourcesError(
                f"unknown gang strategy {value!r}", f"use one of {', '.join(STRATEGIES)} (Ray's placement strategies)"
            )
        return name

    @classmethod
    def of(cls, n: int, resources: Resources | Mapping[str, Any], strategy: str = "PACK") -> Gang:
        """A gang of ``n`` identical bundles.

        Raises:
            InvalidResourcesError: ``n`` is not a whole number >= 1, or the bundle or strategy is invalid.

        Example:
            >>> Gang.of(4, Resources(gpu=1), strategy="STRICT_PACK").describe()
            'STRICT_PACK gang of 4 x (1 GPU)'
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidResourcesError(f"a gang of {n!r} bundles", "give a whole number of bundles >= 1")
        return cls(bundles=[Resources.of(resources)] * n, strategy=strategy)

    @classmethod
    def one(cls, resources: Resources) -> Gang:
        """A plain job as a gang: its resources as the one bundle, on one node (``STRICT_PACK``).

        Built without the bundles' validation: a plain job may ask for nothing (Ray starts it at once), which a bundle
        of a placement group may not.

        Example:
            >>> Gang.one(Resources(cpu=2)).describe()
            'STRICT_PACK gang of 1 x (2 CPU)'
        """
        return cls.model_construct(bundles=(resources,), strategy="STRICT_PACK")

    @property
    def total(self) -> Resources:
        """Every bundle added up: what the gang takes from its cluster.

        A sum, not a request: it may hold a fractional GPU count above 1 (bundles of 0.5 and 1 GPU make 1.5), which
        Ray allows in bundles but not in one request, so it is built without the per-request validation. A gang of
        one bundle (every plain job, in placement) totals that bundle itself.
        """
        if len(self.bundles) == 1:
            return self.bundles[0]
        custom: dict[str, float] = {}
        for bundle in self.bundles:
            for key, amount in bundle.custom.items():
                custom[key] = custom.get(key, 0.0) + amount
        return Resources.model_construct(
            cpu=sum(b.cpu for b in self.bundles),
            gpu=sum(b.gpu for b in self.bundles),
            memory=sum(b.memory for b in self.bundles),
            custom=MappingProxyType(dict(sorted(custom.items()))),
            accelerators=self.accelerators,
        )

    @property
    def accelerators(self) -> frozenset[str]:
        """The GPU models the gang's GPU bundles allow (the same set for each); empty means any."""
        for bundle in self.bundles:
            if bundle.gpu > 0:
                return bundle.accelerators
        return frozenset()

    def to_ray(self, accelerator: str | None = None) -> list[dict[str, float]]:
        """The bundles as Ray placement-group bundles, with the chosen model on the bundles that allow models.

        Raises:
            InvalidResourcesError: ``accelerator`` is not one of the models the gang allows.

        Example:
            >>> Gang.of(2, Resources(cpu=1, gpu=1, accelerators={"A100"})).to_ray("A100")[0]
            {'CPU': 1.0, 'GPU': 1.0, 'accelerator_type:A100': 0.001}
        """
        allowed = self.accelerators
        if accelerator is not None and allowed and accelerator not in allowed:
            raise InvalidResourcesError(
                f"accelerator {accelerator!r} is not one of the gang's allowed models {sorted(allowed)}",
                "let placement choose the model",
            )
        return [bundle.to_ray(accelerator if bundle.accelerators else None) for bundle in self.bundles]

    def describe(self) -> str:
        """A short human form, e.g. ``STRICT_SPREAD gang of 2 x (1 CPU, 1 GPU)``; equal bundles are counted."""
        counts: dict[Resources, int] = {}
        for bundle in self.bundles:
            counts[bundle] = counts.get(bundle, 0) + 1
        if len(counts) == 1:
            return f"{self.strategy} gang of {len(self.bundles)} x ({self.bundles[0].describe()})"
        parts = ", ".join(f"{n} x ({bundle.describe()})" for bundle, n in counts.items())
        return f"{self.strategy} gang of {len(self.bundles)}: {parts}"


def format_bytes(n: float) -> str:
    """Bytes in GiB (or MiB below 1 GiB), for tables and messages."""
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def accelerator_models(keys: Iterable[str]) -> list[str]:
    """The GPU models named by ``accelerator_type:<model>`` keys among Ray resource names."""
    return sorted(k[len(ACCELERATOR_PREFIX) :] for k in keys if k.startswith(ACCELERATOR_PREFIX))
