#!/usr/bin/env bash
# The real consumers of longsearch's exports, for the tests that run only when they are present:
#   - vLLM and SGLang wheels (pip download --no-deps; not installed: tests/consumer_code.py runs their own
#     longrope RoPE code from the wheel's source) into .cache/consumers/
#   - llama-cpp-python, built from source with this machine's compilers into the project's venv (~10 min on 2 cores)
# Then: python -m pytest -q tests/test_export.py tests/test_llama_cpp.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .cache/consumers
"$PY" -m pip download -q --no-deps -d .cache/consumers "vllm==${VLLM_VERSION:-0.33.0}" "sglang==${SGLANG_VERSION:-0.5.23}"
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$PY" -m pip install --no-cache-dir "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
fi
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
ls .cache/consumers
