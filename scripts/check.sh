#!/usr/bin/env bash
# The static checks CI runs before the tests, and developers before they stop: ruff (pyflakes, pycodestyle errors
# and warnings, import order, 120 columns) and import-linter (the layers of docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check adapt tests scripts configs experiments benchmarks
.venv/bin/lint-imports
