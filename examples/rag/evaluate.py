"""Evaluation stage: retrieval hit@1/3/5 and citation accuracy of the answers to the held-out FAQ questions.

hit@k: the question's own answer section is among the sections of the top k chunks retrieved.
Citation accuracy: the chunk the answer cites belongs to the question's answer section.
Reads ``$RAYFLEET_INPUT_GENERATE/answers.jsonl``; writes ``metrics.json`` to ``$RAYFLEET_OUTPUT``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from rayfleet.pipeline import ENV_OUTPUT, input_env, open_uri

KS = (1, 3, 5)


def metrics(answers: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """hit@1/3/5 and citation accuracy over the answers (each has section_id, retrieved, cited_section)."""
    answers = list(answers)
    n = len(answers)
    out: dict[str, float] = {"questions": n}
    for k in KS:
        out[f"hit@{k}"] = round(sum(a["section_id"] in a["retrieved"][:k] for a in answers) / n, 3) if n else 0.0
    out["citation_accuracy"] = round(sum(a["cited_section"] == a["section_id"] for a in answers) / n, 3) if n else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", default=os.environ.get(input_env("generate")))
    parser.add_argument("--out", default=os.environ.get(ENV_OUTPUT))
    args = parser.parse_args()
    fs, where = open_uri(args.answers)
    answers = [json.loads(line) for line in fs.cat_file(f"{where}/answers.jsonl").decode().splitlines()]
    result = metrics(answers)
    fs, out = open_uri(args.out)
    fs.makedirs(out, exist_ok=True)
    fs.pipe_file(f"{out}/metrics.json", json.dumps(result, indent=2).encode())
    print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
