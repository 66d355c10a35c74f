#!/usr/bin/env bash
# The static checks CI runs before the tests, and developers before they stop: ruff (pyflakes, pycodestyle errors
# and warnings, import order, 120 columns), import-linter (the layers of docs/architecture.md) and the documentation
# build: Sphinx with warnings as errors and -n, so a cross-reference in a docstring or a page that resolves to
# nothing, or a config key without a description, fails it (docs/conf.py; no network: no intersphinx). The site
# goes to $ADAPT_DOCS_OUT (default: a folder under the system's temporary directory); -E rebuilds it whole, as an
# incremental build would not repeat the warnings of the pages it does not reread.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check adapt tests scripts configs experiments benchmarks docs
.venv/bin/lint-imports
out="${ADAPT_DOCS_OUT:-${TMPDIR:-/tmp}/adapt-docs-$(id -u)}"
.venv/bin/sphinx-build -q -E -n -W --keep-going -b html docs "$out"
echo "docs: $out/index.html"
