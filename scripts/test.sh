#!/usr/bin/env bash
# The whole test suite: set up .venv, then unit tests (pure code) and integration tests (real local Ray clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra --durations=10 "$@"
