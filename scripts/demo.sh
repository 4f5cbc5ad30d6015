#!/usr/bin/env bash
# The main job: set up .venv, then run the demo on an embedded local fleet of real Ray clusters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
