"""Ingestion stage (static CPU cluster): corpus -> chunks -> MiniLM vectors (Ray tasks) -> LanceDB at the artifact URI.

Run by the pipeline as a fleet job; its output URI is ``$RAYFLEET_OUTPUT``. It writes there:
``lancedb/`` (table ``chunks``: id, doc, section_id, section, text, held_out, vector), ``questions.jsonl`` (the
held-out FAQ headings, see chunking.py) and ``manifest.json`` (counts and timings).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import chunking
import embedding
import ray

from rayfleet.pipeline import ENV_OUTPUT, artifact_uri, open_uri


@ray.remote(num_cpus=1)
def embed_shard(texts: list[str], dtype: str) -> tuple[list[list[float]], float, str]:
    """Vectors for one shard of chunks; the model is loaded once per worker process and reused by later shards."""
    started = time.perf_counter()
    model = embedding.load(dtype, threads=1)
    loaded = time.perf_counter()
    vectors = embedding.encode(model, texts)
    return vectors.tolist(), loaded - started, ray.get_runtime_context().get_node_id()[-12:]


def read_corpus(uri: str, subset: str) -> tuple[list[tuple[str, str]], str]:
    """``(relative path, text)`` of the subset's files under ``uri``, and the corpus version (``VERSION`` next to
    the files, or the committed ``SOURCE.md``'s)."""
    fs, root = open_uri(uri)
    root = root.rstrip("/")
    paths = [p[len(root) + 1 :] for p in fs.find(root) if p.endswith(".rst.txt")]
    files = [(p, fs.cat_file(f"{root}/{p}").decode("utf-8")) for p in chunking.select(paths, subset)]
    version = "unknown"
    for candidate in (f"{root}/../VERSION", f"{root}/VERSION"):
        if fs.exists(candidate):
            version = fs.cat_file(candidate).decode().strip()
            break
    else:
        source = f"{root}/../SOURCE.md"
        if fs.exists(source):
            text = fs.cat_file(source).decode()
            version = text.split("version **", 1)[1].split("**", 1)[0] if "version **" in text else version
    return files, version


def write_index(uri: str, rows: list[dict], vectors: list[list[float]]) -> None:
    import lancedb
    import pyarrow as pa

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    table = pa.table(
        {
            **{key: pa.array(values) for key, values in columns.items()},
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array([x for v in vectors for x in v], pa.float32()), embedding.DIMENSIONS
            ),
        }
    )
    db = lancedb.connect(artifact_uri(uri, "lancedb"))
    db.create_table("chunks", data=table, mode="overwrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True, help="URI of the directory holding the *.rst.txt files")
    parser.add_argument("--subset", default="default", choices=sorted(chunking.SUBSETS))
    parser.add_argument("--out", default=os.environ.get(ENV_OUTPUT), help="artifact URI (default $RAYFLEET_OUTPUT)")
    parser.add_argument("--shard", type=int, default=48, help="chunks per Ray task")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()
    if not args.out:
        parser.error("--out or $RAYFLEET_OUTPUT is needed")

    started = time.time()
    files, version = read_corpus(args.corpus, args.subset)
    chunks, questions = chunking.parse_corpus(files)
    print(f"corpus python3.11-doc {version}, subset {args.subset}: {len(files)} files -> {len(chunks)} chunks, "
          f"{len(questions)} held-out FAQ questions", flush=True)  # fmt: skip

    ray.init(ignore_reinit_error=True, log_to_driver=False)  # Ray's own worker and raylet notices stay in its logs
    cpus = int(ray.available_resources().get("CPU", 1))
    texts = [c.text for c in chunks]
    shards = [texts[i : i + args.shard] for i in range(0, len(texts), args.shard)]
    print(f"embedding {len(texts)} chunks in {len(shards)} Ray tasks over {cpus} free CPUs ({args.dtype})", flush=True)
    embed_started = time.time()
    pending = {embed_shard.remote(shard, args.dtype): n for n, shard in enumerate(shards)}
    results: dict[int, list[list[float]]] = {}
    nodes: set[str] = set()
    load_s = 0.0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            vectors, loaded, node = ray.get(ref)
            results[pending.pop(ref)] = vectors
            nodes.add(node)
            load_s = max(load_s, loaded)
        if len(results) % max(1, len(shards) // 5) == 0 or not pending:
            count = sum(len(v) for v in results.values())
            print(f"  embedded {count}/{len(texts)} chunks", flush=True)
    embed_s = time.time() - embed_started
    vectors = [v for n in range(len(shards)) for v in results[n]]

    write_index(args.out, [c.to_row() for c in chunks], vectors)
    fs, out = open_uri(args.out)
    fs.makedirs(out, exist_ok=True)
    fs.pipe_file(f"{out}/questions.jsonl", "".join(json.dumps(q.__dict__) + "\n" for q in questions).encode())
    manifest = {
        "corpus": "python3.11-doc",
        "corpus_version": version,
        "subset": args.subset,
        "files": len(files),
        "chunks": len(chunks),
        "questions": len(questions),
        "model": embedding.MODEL,
        "dtype": args.dtype,
        "tasks": len(shards),
        "nodes": len(nodes),
        "embed_seconds": round(embed_s, 2),
        "model_load_seconds": round(load_s, 2),
        "chunks_per_second": round(len(chunks) / embed_s, 1),
        "seconds": round(time.time() - started, 2),
    }
    fs.pipe_file(f"{out}/manifest.json", json.dumps(manifest, indent=2).encode())
    print(f"wrote {len(chunks)} chunks to LanceDB at {artifact_uri(args.out, 'lancedb')} "
          f"({manifest['chunks_per_second']} chunks/s over {len(nodes)} node(s))", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
