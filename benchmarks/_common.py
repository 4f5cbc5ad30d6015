"""What every benchmark records: the command, the machine, the date, percentiles, and where the JSON goes."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def command() -> str:
    """The command line as it would be typed from the repository root."""
    return shlex.join([_relative(Path(sys.executable)), _relative(Path(sys.argv[0]).resolve()), *sys.argv[1:]])


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:  # read-only: --no-optional-locks keeps `status` from touching the index
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "rayfleet": _version("rayfleet"),
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether rayfleet/ had uncommitted changes (others edit it while we measure)."""
    dirty = _git("status", "--porcelain", "--", "rayfleet")
    return {"commit": _git("rev-parse", "HEAD"), "rayfleet_dirty": bool(dirty) if dirty is not None else None}


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on this shared machine skews the figures."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def stats_ms(samples_s: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p90, p99, mean, min and max of durations given in seconds, in milliseconds (3 decimals)."""
    a = np.asarray(samples_s, dtype=float) * 1000.0
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": len(a),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(a.mean()), 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def header(name: str, load_at_start: list[float] | None) -> dict[str, Any]:
    """What every result document starts with: the benchmark, command, date, machine, commit and load average."""
    return {
        "benchmark": name,
        "command": command(),
        "date_utc": utc_now(),
        "machine": machine(),
        "source": source(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": loadavg(),
    }


def emit(name: str, document: dict[str, Any]) -> Path:
    """Print the JSON document to stdout and write the same to benchmarks/results/<name>.json."""
    text = json.dumps(document, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(text + "\n")
    print(text)
    return path


def profile_rows(profiler: Any, per: int, unit: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` functions of a cProfile run by cumulative time, per ``unit`` (e.g. per submit), ``per`` units."""
    import io
    import pstats

    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename.split("site-packages/")[-1].split("/main/")[-1]
        rows.append(
            {
                "function": f"{where}:{line}({func})",
                f"calls_per_{unit}": round(ncalls / per, 1),
                f"own_ms_per_{unit}": round(tottime / per * 1000, 4),
                f"cum_ms_per_{unit}": round(cumtime / per * 1000, 4),
            }
        )
    rows.sort(key=lambda r: r[f"cum_ms_per_{unit}"], reverse=True)
    return rows[:top]
