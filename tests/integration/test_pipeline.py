"""Pipelines end to end: the RAG example on clusters created from its templates (real Ray, the real autoscaler, the
real MiniLM model, real LanceDB) on a tiny corpus subset, and a failing stage that stops its dependents."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rayfleet import Fleet, Pipeline, Stage, StageFailedError, StageState
from rayfleet.ledger import Ledger

pytestmark = pytest.mark.integration

RAG = Path(__file__).resolve().parents[2] / "examples" / "rag"
sys.path.insert(0, str(RAG))
import rag_pipeline  # noqa: E402


@pytest.mark.timeout(900)
def test_the_rag_pipeline_runs_end_to_end_and_its_gpu_cluster_scales_from_zero_to_k_and_back(tmp_path: Path) -> None:
    import lancedb  # the rag extra (scripts/setup.sh installs it): a missing one fails here, it is not skipped

    config = rag_pipeline.fleet_config("pipeline-e2e", str(tmp_path / "clusters"), gpu_workers=2)
    pipeline = rag_pipeline.build(str(tmp_path / "artifacts"), subset="tiny", gpu_workers=2)
    with Fleet(config=config, ledger=Ledger(tmp_path / "ledger.db")) as fleet:
        try:
            seen: list[dict[str, tuple[StageState, str | None, str | None]]] = []
            result = pipeline.run(
                fleet,
                show=False,
                poll_s=0.5,
                watch_scale_down_s=120,
                on_change=lambda r: seen.append({n: (s.state, s.cluster, s.awaits) for n, s in r.runs.items()}),
            )
            assert result.ok, result.summary()

            # each stage ran on a cluster made from its own template: one static CPU cluster, one autoscaled
            ingest, generate, evaluate = (result.runs[n] for n in ("ingest", "generate", "evaluate"))
            managed = fleet.managed
            assert managed[ingest.cluster].template == "rag-cpu"
            assert managed[generate.cluster].template == "rag-gpu"
            assert evaluate.cluster == ingest.cluster  # a matching existing cluster is reused, not a third made

            # submitting did not wait for those clusters: each stage was PLACING, waiting for its cluster being created
            for run in (ingest, generate):
                name = run.stage.name
                assert (StageState.PLACING, None, run.cluster) in [s[name] for s in seen], [s[name] for s in seen]
            assert all(s["evaluate"][2] is None for s in seen)  # its cluster was there already

            # the autoscaled stage really scaled, as the fleet's probes saw it: 0 GPU workers, then 2, then 0
            gpu_workers = [g for _, _, g in result.timeline[generate.cluster]]
            assert gpu_workers[0] == 0, result.timeline
            assert max(gpu_workers) == 2, result.timeline
            assert gpu_workers[-1] == 0, result.timeline
            assert [w for _, w, _ in result.timeline[ingest.cluster]] == [1]  # the static cluster's fixed worker

            # real artifacts: LanceDB with a vector per chunk, held-out questions, answers with citations, figures
            out = rag_pipeline.outputs(result)
            assert (out["ingest"]["files"], out["ingest"]["chunks"], out["ingest"]["questions"]) == (6, 62, 32)
            table = lancedb.connect(f"{result.artifacts}/ingest/lancedb").open_table("chunks")
            assert table.count_rows() == 62
            row = table.search().limit(1).to_list()[0]
            assert len(row["vector"]) == 384
            assert abs(sum(x * x for x in row["vector"]) - 1.0) < 0.02  # normalised
            held_out = table.search().where("held_out").limit(100).to_list()
            titles = {q["question"] for q in out["answers"]}
            assert held_out and not any(t in c["text"] for c in held_out for t in titles)  # headings held out
            assert out["generate"]["gpu_actors"] == 2 and out["generate"]["gpu_nodes"] == 2
            assert len(out["answers"]) == 32 and all(a["answer"] for a in out["answers"])
            metrics = out["metrics"]
            assert metrics["questions"] == 32
            assert metrics["hit@1"] <= metrics["hit@3"] <= metrics["hit@5"]
            assert metrics["hit@5"] >= 0.8, metrics  # measured 0.97 on this subset (MiniLM, bf16)
            assert metrics["citation_accuracy"] >= 0.6, metrics  # measured 0.84
        finally:
            fleet.gc(everything=True)


def test_a_failing_stage_stops_its_dependents_and_the_summary_says_where_and_why(fleet: Fleet) -> None:
    say = "python -c \"print('{0}')\""
    fail = "python -c \"import sys; print('bad shard 7'); sys.exit(3)\""
    pipeline = Pipeline(
        [
            Stage("train", fail, {"cpu": 0.25}),
            Stage("report", say.format("report"), {"cpu": 0.25}, depends_on=["train"]),
            Stage("publish", say.format("publish"), {"cpu": 0.25}, depends_on=["report"]),
            Stage("side", say.format("independent"), {"cpu": 0.25}),
        ],
        name="failing",
    )
    result = pipeline.run(fleet, show=False, poll_s=0.3, timeout_s=240)
    states = {name: run.state for name, run in result.runs.items()}
    assert states == {
        "train": StageState.FAILED,
        "report": StageState.STOPPED,
        "publish": StageState.STOPPED,
        "side": StageState.SUCCEEDED,
    }
    train = result.runs["train"]
    assert "exit code 3" in (train.reason or "")
    assert "bad shard 7" in train.handle.logs()
    assert result.runs["report"].job_id is None and result.runs["publish"].job_id is None  # never submitted
    submitted = {j.record.metadata.get("stage") for j in fleet.jobs(limit=50) if j.record.metadata}
    assert "train" in submitted and "report" not in submitted
    summary = result.summary()
    assert f"stage train failed on cluster {train.cluster}: Job entrypoint command failed with exit code 3" in summary
    assert "so these never started: report, publish" in summary
    with pytest.raises(StageFailedError) as e:
        result.raise_for_failure()
    assert e.value.stage == "train" and e.value.stopped == ["report", "publish"]
