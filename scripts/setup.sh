#!/usr/bin/env bash
# Installs awq_compile and its test tools on a fresh machine (CPU): torch is pinned to the 2.13.0 CPU
# wheel first so nothing pulls the multi-GB CUDA build; triton comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
