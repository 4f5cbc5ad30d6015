"""Generation stage (autoscaled GPU cluster): answer the held-out questions from the index, on Ray actors of 1 GPU each.

Asking for ``--workers`` actors of ``num_gpus=1`` at once is the demand that makes the cluster's autoscaler add GPU
workers (from zero); when this job ends the actors go, the workers fall idle and the autoscaler removes them.
Reads ``$RAYFLEET_INPUT_INGEST`` (LanceDB + questions.jsonl); writes ``answers.jsonl`` and ``manifest.json`` to
``$RAYFLEET_OUTPUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta
from typing import Any

import embedding
import generators
import ray
from ray.util import ActorPool

from rayfleet.pipeline import ENV_OUTPUT, artifact_uri, input_env, open_uri


@ray.remote(num_gpus=1, num_cpus=1)
class Answerer:
    """One GPU worker's share: embeds questions, searches LanceDB, and runs the generator."""

    def __init__(self, index: str, generator: str, dtype: str, top_k: int) -> None:
        self.started = time.time()  # the node it needed has joined: the scale-up is over
        import lancedb

        self.model = embedding.load(dtype, threads=1)
        # another process wrote the table: read it as it is now, not as a cached older version
        db = lancedb.connect(artifact_uri(index, "lancedb"), read_consistency_interval=timedelta(0))
        self.table = db.open_table("chunks")
        self.generator = generators.make(generator, self.model)
        self.top_k = top_k
        self.ready = time.time()

    def times(self) -> tuple[float, float, str]:
        return self.started, self.ready, ray.get_runtime_context().get_node_id()[-12:]

    def answer(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        vectors = embedding.encode(self.model, [q["question"] for q in batch])
        out = []
        for question, vector in zip(batch, vectors, strict=True):
            hits = self.table.search(vector.tolist()).metric("cosine").limit(self.top_k).to_list()
            text, cited = self.generator.answer(question["question"], vector, hits)
            out.append(
                {
                    **question,
                    "retrieved": [h["section_id"] for h in hits],
                    "answer": text,
                    "cited_section": hits[cited]["section_id"] if hits else None,
                    "cited_chunk": hits[cited]["id"] if hits else None,
                    "node": ray.get_runtime_context().get_node_id()[-12:],
                }
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", default=os.environ.get(input_env("ingest")), help="the ingestion stage's URI")
    parser.add_argument("--out", default=os.environ.get(ENV_OUTPUT), help="artifact URI (default $RAYFLEET_OUTPUT)")
    parser.add_argument("--generator", default="extractive", help="extractive | smollm2 | transformers:<dir>")
    parser.add_argument("--workers", type=int, default=2, help="GPU actors to ask for at once (k)")
    parser.add_argument("--batch", type=int, default=8, help="questions per actor call")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--limit", type=int, default=0, help="answer only the first N questions (0: all)")
    args = parser.parse_args()
    if not args.index or not args.out:
        parser.error("--index/--out (or the pipeline's environment) are needed")

    fs, index = open_uri(args.index)
    questions = [json.loads(line) for line in fs.cat_file(f"{index}/questions.jsonl").decode().splitlines()]
    if args.limit:
        questions = questions[: args.limit]
    batches = [questions[i : i + args.batch] for i in range(0, len(questions), args.batch)]

    ray.init(ignore_reinit_error=True, log_to_driver=False)  # Ray's own worker and raylet notices stay in its logs
    print(f"asking for {args.workers} actors of 1 GPU each for {len(questions)} questions "
          f"({len(batches)} batches, generator {args.generator})", flush=True)  # fmt: skip
    asked = time.time()
    actors = [Answerer.remote(args.index, args.generator, args.dtype, args.top_k) for _ in range(args.workers)]
    times = ray.get([a.times.remote() for a in actors])
    ready = time.time()
    first_join = min(t[0] for t in times) - asked
    nodes = sorted({t[2] for t in times})
    print(f"{len(actors)} GPU actors ready on {len(nodes)} node(s) after {ready - asked:.1f} s "
          f"(first worker up after {first_join:.1f} s)", flush=True)  # fmt: skip

    answers: list[dict[str, Any]] = []
    for n, done in enumerate(ActorPool(actors).map_unordered(lambda a, b: a.answer.remote(b), batches), 1):
        answers.extend(done)
        if n % max(1, len(batches) // 4) == 0 or n == len(batches):
            print(f"  answered {len(answers)}/{len(questions)}", flush=True)
    answer_s = time.time() - ready
    order = {q["id"]: i for i, q in enumerate(questions)}
    answers.sort(key=lambda a: order[a["id"]])

    fs, out = open_uri(args.out)
    fs.makedirs(out, exist_ok=True)
    fs.pipe_file(f"{out}/answers.jsonl", "".join(json.dumps(a) + "\n" for a in answers).encode())
    manifest = {
        "generator": args.generator,
        "questions": len(questions),
        "gpu_actors": len(actors),
        "gpu_nodes": len(nodes),
        "scale_up_seconds": round(first_join, 2),
        "actors_ready_seconds": round(ready - asked, 2),
        "answer_seconds": round(answer_s, 2),
        "answers_per_second": round(len(answers) / answer_s, 2),
        "ended_at": time.time(),
    }
    fs.pipe_file(f"{out}/manifest.json", json.dumps(manifest, indent=2).encode())
    print(f"wrote {len(answers)} answers ({manifest['answers_per_second']}/s)", flush=True)


if __name__ == "__main__":
    main()
