#!/usr/bin/env bash
# GPU check for the vLLM engine (issue 10), a few minutes on one GPU:
#   1. the `gpu`-marked tests and the vLLM engine's tests on CUDA (vLLM 0.33: model runner V2, the
#      V2 logits processor, the tempered_logits Triton kernel);
#   2. bench/gpu_power.py: SMC(32) ÷ plain latency, MH tokens and wall time vs the no-reuse
#      reference, Tier 2 overhead, on a random-weight model of Qwen2.5-1.5B's shape.
# Results: bench/out/gpu_tests.log, bench/out/gpu_power.json (+ .log). Exit status: 0 only when
# every step passed; each failure prints one "gpu_check: FAILED: ..." line.
#
# Python: $PYTHON (default: .venv/bin/python if it imports vllm, else python3). vLLM must import
# there, or be installable with pip (the machine may be offline: then install beforehand with
# `pip install -e '.[vllm,dev]'`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
mkdir -p "$OUT"
fail() { echo "gpu_check: FAILED: $*" >&2; FAILED=1; }
die() { echo "gpu_check: FAILED: $*" >&2; exit 1; }
FAILED=0

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import vllm" 2>/dev/null; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi cannot see a GPU"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die "torch in $PYTHON has no CUDA ($("$PYTHON" -c 'import torch; print(torch.__version__)' 2>&1))"
if ! "$PYTHON" -c "import vllm" 2>/dev/null; then
  echo "gpu_check: vLLM not importable in $PYTHON; installing vllm==0.33.0 ..."
  "$PYTHON" -m pip install -q "vllm==0.33.0" || die "cannot install vllm==0.33.0 (offline?): install it first"
fi
"$PYTHON" - <<'EOF' || die "vLLM import/version check failed"
import vllm, torch
print(f"vllm {vllm.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
if not vllm.__version__.startswith("0.33"):
    print(f"gpu_check: WARNING: vLLM {vllm.__version__}, this check was written against 0.33")
EOF
# temper itself: importable from the tree (no network needed), its test deps present
"$PYTHON" -c "import temper, pytest, pytest_asyncio, transformers" 2>/dev/null \
  || "$PYTHON" -m pip install -q -e ".[dev]" \
  || echo "gpu_check: could not pip install temper's dev extras (offline?); trying the tree as it is"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import temper, pytest, pytest_asyncio, transformers" || die "temper or its test dependencies do not import"

echo "== 1. gpu and vLLM tests (CUDA) =="
timeout 300 "$PYTHON" -m pytest -q -x -p no:cacheprovider -m "gpu or vllm" -s \
  tests/test_vllm_engine.py tests/test_engine_conformance.py tests/test_vllm_parts.py \
  tests/test_kernels_tempered_logits.py tests/test_kernels_tempered_sample.py tests/test_power_vllm.py \
  2>&1 | tee "$OUT/gpu_tests.log" | grep -E "passed|failed|error|TV=|max err|max abs|FAILED|Error"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "gpu tests (see $OUT/gpu_tests.log)"

echo "== 2. GPU benchmark (Qwen2.5-1.5B shape, random weights) =="
timeout 300 "$PYTHON" -m bench.gpu_power "$@" 2>&1 | tee "$OUT/gpu_power.log" \
  | grep -vE "^\(|INFO|WARNING [0-9]"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "benchmark (see $OUT/gpu_power.log)"

[ "$FAILED" -eq 0 ] && echo "gpu_check: all passed" || exit 1
