#!/usr/bin/env bash
# Install finexp with its test tools into the current Python environment (a fresh machine needs nothing else).
# torch is pinned to 2.13.0: on this project's CPU machines pip takes a local CPU build; elsewhere PyPI's build
# for your platform. Override with FINEXP_TORCH="torch==X.Y.Z" (or FINEXP_TORCH="" to keep the installed torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check ${FINEXP_TORCH-"torch==2.13.0"} -e ".[dev]"
