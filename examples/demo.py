"""The main job, on an embedded local fleet: a handful of jobs placed by live capacity, with where and why.

Run it with `bash scripts/demo.sh` (it makes the virtual environment first), or `python examples/demo.py`.
"""

from __future__ import annotations

import sys
import tempfile

from rich.console import Console
from rich.table import Table

import rayfleet
from rayfleet.cli import render_decision

console = Console(width=None if sys.stdout.isatty() else 120)  # logs and CI: wide enough for the tables

PI = (
    'python -c "import ray, random; ray.init(); '
    "f = ray.remote(lambda n: sum(random.random()**2 + random.random()**2 < 1 for _ in range(n))); "
    "print('pi ~', 4 * sum(ray.get([f.remote(50_000) for _ in range(4)])) / 200_000)\""
)
JOBS = [
    (
        "a CPU job",
        "python -c \"import platform; print('hello from', platform.node())\"",
        rayfleet.Resources(cpu=0.5),
        {},
    ),
    (
        "by label",
        "python -c \"print('I run where kind=cpu')\"",
        rayfleet.Resources(cpu=0.5),
        {"labels": {"kind": "cpu"}},
    ),
    (
        "a GPU job (A100 or H100)",
        "python -c \"import os; print('CUDA_VISIBLE_DEVICES =', os.environ['CUDA_VISIBLE_DEVICES'])\"",
        rayfleet.Resources(gpu=1, accelerators={"A100", "H100"}),
        {},
    ),
    ("Ray tasks", PI, rayfleet.Resources(cpu=0.5), {}),
    ("too large", "python train.py", rayfleet.Resources(cpu=8, gpu=4), {}),
]


def main() -> None:
    ledger = tempfile.mkdtemp(prefix="rayfleet-demo-") + "/ledger.db"
    console.rule("[bold]rayfleet demo: starting an embedded local fleet")
    console.print("cluster 'cpu': 2 CPUs;  cluster 'gpu': 2 CPUs + 2 logical A100 GPUs (real Ray clusters)")
    with rayfleet.local_fleet(name="demo", ledger=ledger) as fleet:
        handles = []
        for title, entrypoint, resources, selectors in JOBS:
            console.rule(f"[bold]{title}: {resources.describe()}")
            console.print(render_decision(fleet.explain(resources, **selectors), resources))
            try:
                handle = fleet.submit(entrypoint, resources, **selectors)
            except rayfleet.NoCapacityError as e:
                console.print(f"[red]not submitted:[/] {e}", highlight=False)
                continue
            console.print(f"submitted {handle.id} to [bold]{handle.cluster}[/]")
            handles.append((title, handle))

        console.rule("[bold]results")
        table = Table()
        for column in ("job", "id", "cluster", "state"):
            table.add_column(column, no_wrap=True)
        table.add_column("output")
        for title, handle in handles:
            state = handle.wait(timeout=300)
            output = [
                line for line in handle.logs().splitlines() if line and "INFO" not in line and "Running" not in line
            ]
            table.add_row(title, handle.id, handle.cluster, state.value, "\n".join(output[-2:]))
        console.print(table)
        console.rule("[bold]stopping the fleet")
    console.print("done: every local cluster was stopped by its own process id")


if __name__ == "__main__":
    main()
