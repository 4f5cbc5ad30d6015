"""The main job: the RAG pipeline end to end on an embedded local fleet of real Ray clusters.

    bash scripts/demo.sh                       # set up .venv, then this with the default subset (a few minutes)
    .venv/bin/python examples/rag/run.py --corpus full     # all 497 files (fetched from Debian first)

Clusters are created on demand from two templates: a static CPU cluster for ingestion and evaluation, and a GPU
cluster (logical GPUs) whose autoscaler adds GPU workers for generation from zero and removes them after idle.
At the end: the clusters used, the GPU workers' 0 -> k -> 0, the quality figures and a few answers; every cluster it
created is then deleted (its own processes, by pid).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rag_pipeline

import rayfleet

console = Console(width=None if sys.stdout.isatty() else 120)


def corpus_dir(choice: str) -> tuple[str, str]:
    """(directory URI, subset) for ``--corpus``: the committed subset, or the whole package fetched from Debian."""
    if choice != "full":
        return str(rag_pipeline.DATA), choice
    cache = Path.home() / ".cache" / "rayfleet" / "rag-corpus"
    console.print(f"fetching python3.11-doc from Debian into {cache} (apt-get download + dpkg-deb -x) ...")
    version = (
        subprocess.run(
            ["bash", str(rag_pipeline.HERE / "fetch_corpus.sh"), str(cache)], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    console.print(f"corpus: python3.11-doc {version} (the committed subset is from 3.11.2-6+deb12u9)")
    return str(cache / "python3.11-doc"), "full"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corpus",
        choices=["tiny", "default", "full"],
        default="default",
        help="tiny: 6 files (CI); default: the committed subset (32 files); full: all 497 files",
    )
    parser.add_argument("--generator", default="extractive", help="extractive | smollm2 | transformers:<model dir>")
    parser.add_argument("--gpu-workers", type=int, default=2, help="k: the most GPU workers the cluster scales to")
    parser.add_argument("--samples", type=int, default=4, help="sample answers to print")
    parser.add_argument("--keep", action="store_true", help="leave the clusters running (delete: rayfleet gc)")
    args = parser.parse_args()

    corpus, subset = corpus_dir(args.corpus)
    work = Path(tempfile.mkdtemp(prefix="rayfleet-rag-"))
    artifacts = str(work / "artifacts")
    config = rag_pipeline.fleet_config("rag-demo", str(work / "clusters"), args.gpu_workers)
    pipeline = rag_pipeline.build(
        artifacts, corpus=corpus, subset=subset, generator=args.generator, gpu_workers=args.gpu_workers
    )
    console.rule("[bold]rayfleet: a RAG pipeline on an embedded local fleet")
    console.print(
        f"corpus: Python 3.11 docs (python3.11-doc), subset [bold]{subset}[/]; embeddings: all-MiniLM-L6-v2 (bf16, "
        f"CPU); generator: [bold]{args.generator}[/]\n"
        "stages: ingest (static CPU cluster) -> generate (autoscaled GPU cluster, 0..{k} logical GPUs) -> evaluate\n"
        f"artifacts: {artifacts}".replace("{k}", str(args.gpu_workers)),
        highlight=False,
    )
    started = time.time()
    with rayfleet.Fleet(config=config, ledger=work / "ledger.db") as fleet:
        try:
            result = pipeline.run(fleet, console=console, watch_scale_down_s=90)
            report(result, args.samples, time.time() - started)
        finally:
            if not args.keep:
                console.rule("[bold]deleting the clusters this run created")
                deleted = fleet.gc(everything=True)
                console.print(f"deleted {', '.join(deleted) or 'none'}: their own processes, by pid")
    return 0 if result.ok else 1


def report(result: rayfleet.PipelineResult, samples: int, seconds: float) -> None:
    out = rag_pipeline.outputs(result)
    console.rule("[bold]clusters used")
    table = Table()
    for column in ("cluster", "template", "mode", "stages", "workers over time (s: workers/GPU workers)"):
        table.add_column(column)
    clusters: dict[str, list[str]] = {}
    for name, run in result.runs.items():
        if run.cluster:
            clusters.setdefault(run.cluster, []).append(name)
    for cluster, stages in clusters.items():
        template = result.runs[stages[0]].stage.template
        timeline = ", ".join(f"{t:.0f}: {w}/{g}" for t, w, g in result.timeline.get(cluster, []))
        table.add_row(cluster, template.name if template else "", template.mode if template else "", ", ".join(stages),
                      timeline)  # fmt: skip
    console.print(table)
    gpu_cluster = result.runs["generate"].cluster
    if gpu_cluster:
        events = rag_pipeline.scale_events(result, gpu_cluster)
        down = (
            f"0 again at {events['down_at']:.0f} s ({events['scale_down_seconds']:.0f} s after its last stage ended)"
            if events["down_at"] is not None
            else "not back to 0 within the wait"
        )
        console.print(
            f"GPU workers on {gpu_cluster}: 0 -> [bold]{events['peak']}[/] (at {events['up_at'] or 0:.0f} s) -> {down}",
            highlight=False,
        )
    if not result.ok:
        console.print(f"[bold red]{result.summary()}[/]", highlight=False)
        for run in result.failed:
            if run.handle is not None:
                console.print(textwrap.indent(run.handle.logs()[-3000:], "  | "), highlight=False, markup=False)
        return
    ingest, generate, metrics = out["ingest"], out["generate"], out["metrics"]
    console.rule("[bold]figures")
    console.print(
        f"ingestion: {ingest['files']} files -> {ingest['chunks']} chunks, embedded at "
        f"{ingest['chunks_per_second']} chunks/s by {ingest['tasks']} Ray tasks on {ingest['nodes']} node(s) "
        f"(corpus python3.11-doc {ingest['corpus_version']})\n"
        f"generation: {generate['questions']} questions at {generate['answers_per_second']} answers/s on "
        f"{generate['gpu_actors']} GPU actors; first GPU worker up {generate['scale_up_seconds']} s after asking\n"
        f"known answers: {metrics['questions']:.0f} FAQ headings ending in '?' with an answer of 10+ words, held out "
        "of the index\n"
        f"retrieval: [bold]hit@1 {metrics['hit@1']:.2f}  hit@3 {metrics['hit@3']:.2f}  hit@5 {metrics['hit@5']:.2f}"
        f"[/]   citation accuracy: [bold]{metrics['citation_accuracy']:.2f}[/]\n"
        f"end to end: {seconds:.0f} s",
        highlight=False,
    )
    console.rule("[bold]sample answers (some that cite the right section, some that do not)")
    answers = out["answers"]
    right = [a for a in answers if a["cited_section"] == a["section_id"]]
    wrong = [a for a in answers if a["cited_section"] != a["section_id"]]

    def spread(items: list, n: int) -> list:
        return items[:: max(1, len(items) // max(1, n))][:n]

    shown = spread(right, samples - samples // 2) + spread(wrong, samples // 2)
    for answer in shown:
        ok = answer["cited_section"] == answer["section_id"]
        mark = "[green]cites the right section[/]" if ok else f"[red]cites {answer['cited_section']}[/]"
        console.print(f"[bold]Q:[/] {answer['question']}", highlight=False)
        console.print(f"[bold]A:[/] {textwrap.shorten(answer['answer'], 300)}", highlight=False)
        console.print(f"   {mark} (answer in {answer['section_id']})\n", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
