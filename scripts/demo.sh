#!/usr/bin/env bash
# The main job: set up .venv, then run the RAG pipeline end to end on an embedded local fleet of real Ray clusters.
# Options go to examples/rag/run.py: --corpus tiny|default|full, --generator extractive|smollm2, --gpu-workers K.
# The previous demo (a handful of jobs placed on a two-cluster fleet): .venv/bin/python examples/demo.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/rag/run.py "$@"
