"""The RAG pipeline as rayfleet stages: ingest (static CPU cluster) -> generate (autoscaled GPU cluster) -> evaluate.

Used by ``run.py`` (the main job) and by the integration test. Only rayfleet is imported here; the stages' own code
(ingest.py, generate.py, evaluate.py and their helpers) travels to the clusters as the jobs' ``working_dir``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from rayfleet.config import FleetConfig
from rayfleet.pipeline import Pipeline, PipelineResult, Stage, artifact_uri, open_uri
from rayfleet.templates import ClusterTemplate

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "python3.11-doc"
# The GPU workers' idle timeout: short, so that the scale-down shows within the demo and the test.
IDLE_TIMEOUT_S = 10
# The stages' code is found through PYTHONPATH on the shared filesystem of the local fleet. (A working_dir upload
# would carry it to remote clusters, but on an autoscaling local cluster the fake nodes share the head's session
# directory and each node's runtime-env agent deletes and re-downloads the same working_dir while actors of other
# nodes run from it: seen as actors dying at start. On KubeRay, bake the code into the image or pass ship_code=True.)
ENV_VARS = {
    "HF_HUB_OFFLINE": "1",  # the models ship in packages: never ask a hub
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",  # no "Loading weights" bars in the stages' output
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "LANCEDB_LOG": "error",
}


def runtime_env(ship_code: bool = False) -> dict[str, Any]:
    if ship_code:
        return {"working_dir": str(HERE), "excludes": ["data/", "__pycache__/", "*.md", "*.sh"], "env_vars": ENV_VARS}
    return {"env_vars": {**ENV_VARS, "PYTHONPATH": str(HERE)}}


def templates(gpu_workers: int = 2, idle_timeout_s: int = IDLE_TIMEOUT_S) -> tuple[ClusterTemplate, ClusterTemplate]:
    """The two cluster templates: a fixed CPU cluster for ingestion, a GPU cluster that autoscales from zero.

    Locally the GPUs are logical (Ray counts them; the work runs on the CPU); on KubeRay the same templates render
    to RayClusters, the GPU one with a worker group of min 0, max ``gpu_workers`` and the in-tree autoscaler.
    """
    ingest = ClusterTemplate(
        name="rag-cpu",
        mode="static",
        head={"cpu": 1, "memory": "1GiB"},  # the stage's driver
        workers=[{"name": "cpu", "cpu": 2, "memory": "2GiB", "replicas": 1}],  # the embedding tasks
        labels={"pool": "rag-cpu"},
        idle_ttl_s=600,
        ready_timeout_s=240,  # a local cluster is up in 7-25 s (a busy machine); give up on one that hangs
    )
    generate = ClusterTemplate(
        name="rag-gpu",
        mode="autoscaled",
        head={"cpu": 1, "memory": "1GiB"},
        workers=[{"name": "gpu", "cpu": 1, "gpu": 1, "min_replicas": 0, "max_replicas": gpu_workers}],
        idle_timeout_s=idle_timeout_s,
        labels={"pool": "rag-gpu"},
        idle_ttl_s=600,
        ready_timeout_s=240,
    )
    return ingest, generate


def fleet_config(name: str, directory: str, gpu_workers: int = 2, idle_timeout_s: int = IDLE_TIMEOUT_S) -> FleetConfig:
    """A fleet with no fixed clusters and a local provisioner holding the two templates."""
    ingest, generate = templates(gpu_workers, idle_timeout_s)
    return FleetConfig.build(
        name=name,
        probe_ttl_s=1.0,
        provisioners=[
            {
                "kind": "local",
                "directory": directory,
                "max_clusters": 2,
                "max_gpus": gpu_workers,
                "templates": [ingest.model_dump(), generate.model_dump()],
            }
        ],
    )


def build(
    artifacts: str,
    *,
    corpus: str = str(DATA),
    subset: str = "default",
    generator: str = "extractive",
    gpu_workers: int = 2,
    idle_timeout_s: int = IDLE_TIMEOUT_S,
    limit: int = 0,
    ship_code: bool = False,
) -> Pipeline:
    """The pipeline. ``corpus`` is a URI of the directory of ``*.rst.txt`` files; ``artifacts`` the artifact root."""
    ingest, generate = templates(gpu_workers, idle_timeout_s)
    env = runtime_env(ship_code)
    code = "" if ship_code else shlex.quote(str(HERE)) + "/"
    answer = f"python {code}generate.py --generator {generator} --workers {gpu_workers}"
    answer += f" --limit {limit}" if limit else ""
    stages = [
        Stage(
            "ingest",
            f"python {code}ingest.py --corpus {shlex.quote(corpus)} --subset {subset}",
            {"cpu": 1},
            template=ingest,
            runtime_env=env,
            timeout_s=1800,
        ),
        Stage(
            "generate",
            answer,
            {"cpu": 1},
            template=generate,
            depends_on=["ingest"],
            runtime_env=env,
            timeout_s=1800,
        ),
        Stage(
            "evaluate",
            f"python {code}evaluate.py",
            {"cpu": 1},
            template=ingest,
            depends_on=["generate"],
            runtime_env=env,
            timeout_s=300,
        ),
    ]
    return Pipeline(stages, artifacts=artifacts, name="rag")


def read_json(uri: str) -> Any:
    fs, path = open_uri(uri)
    return json.loads(fs.cat_file(path).decode())


def read_jsonl(uri: str) -> list[Any]:
    fs, path = open_uri(uri)
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]


def outputs(result: PipelineResult) -> dict[str, Any]:
    """What the stages wrote: the manifests, the metrics and the answers (whatever exists)."""
    out: dict[str, Any] = {}
    for key, stage, name in (
        ("ingest", "ingest", "manifest.json"),
        ("generate", "generate", "manifest.json"),
        ("metrics", "evaluate", "metrics.json"),
        ("answers", "generate", "answers.jsonl"),
    ):
        uri = artifact_uri(result.artifacts, stage, name)
        fs, path = open_uri(uri)
        if fs.exists(path):
            out[key] = read_jsonl(uri) if name.endswith(".jsonl") else read_json(uri)
    return out


def scale_events(result: PipelineResult, cluster: str) -> dict[str, float | None]:
    """From the run's timeline of a GPU cluster: the peak of GPU workers, when it was first reached and when the
    workers were back to zero (seconds since the run started), and the scale-down delay after its stage ended."""
    timeline = result.timeline.get(cluster, [])
    peak = max((g for _, _, g in timeline), default=0)
    up_at = next((t for t, _, g in timeline if g == peak and peak), None)
    down_at = next((t for t, _, g in timeline if up_at is not None and t > up_at and g == 0), None)
    ended = next((r.ended_at for r in result.runs.values() if r.cluster == cluster and r.ended_at), None)
    last_end = max((r.ended_at or 0 for r in result.runs.values() if r.cluster == cluster), default=None)
    delay = (result.started_at + down_at - (last_end or ended)) if down_at is not None and last_end else None
    return {"peak": peak, "up_at": up_at, "down_at": down_at, "scale_down_seconds": delay}
