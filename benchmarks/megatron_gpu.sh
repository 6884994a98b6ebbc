#!/usr/bin/env bash
# adnanny-megatron GPU check: parity (HF vs megatron, fp32) + 20 bf16 training steps of a small DeepSeek-V3
# (megatron local spec vs a plain HF/torch loop), tokens/s + peak memory + parity diffs -> JSON.
#
#   bash benchmarks/megatron_gpu.sh            # from the repo root; needs .whl/megatron_core-*cp312*.whl
#   OUT=/some/dir bash benchmarks/megatron_gpu.sh
#
# Writes $OUT/megatron_gpu.json (benchmarks/results/megatron_gpu.json when OUT is unset) and a log next to
# it. Expects Python 3.12 + torch + transformers + safetensors + psutil on the machine; megatron-core is
# installed from the carried wheel (no network) unless it is importable already. Total < 6 min on an H100.
# Dynamo stays ON on a GPU (megatron's fused jit kernels); TORCHDYNAMO_DISABLE=1 in the caller's env turns it
# off. On CPU it is off (megatron's CUDA->CPU shim is a TorchFunctionMode dynamo does not trace).
# PYTHON=... picks the interpreter (default python3); on a CPU machine the script runs a small smoke version.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
if ! "$PY" -c "import megatron.core" >/dev/null 2>&1; then
  shopt -s nullglob
  wheels=(.whl/megatron_core-*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "megatron-core is not importable and no wheel under .whl/; see packages/adnanny-megatron/README.md" >&2
    exit 3
  fi
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="packages/adnanny-megatron/src:packages/adnanny-ckpt/src:packages/adnanny-sft/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore
"$PY" -c "import torch, transformers, safetensors, psutil; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TORCHDYNAMO_DISABLE="${TORCHDYNAMO_DISABLE:-0}"
else
  export TORCHDYNAMO_DISABLE=1
fi
timeout -k 10 400 "$PY" benchmarks/megatron_gpu.py --out "$OUT_DIR/megatron_gpu.json" "$@" 2>&1 | tee "$OUT_DIR/megatron_gpu.log"
exit "${PIPESTATUS[0]}"
