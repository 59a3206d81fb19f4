#!/usr/bin/env bash
# LLaDA-8B shapes (random weights) in bf16 on one CUDA GPU, prompts 1k..32k: the Figure 4 comparison,
# then prompts of 64k for the systems whose step should not grow with the prompt.
#
#   bash benchmarks/gpu_llada8b.sh [OUT_DIR]        # default: $OUT if set, else results/gpu-llada8b
#
# For an 80 GB+ GPU (A100/H100/H200). Measured on one H200: see docs/performance.md ("The GPU run").
# Steps, each under its own time limit (seconds: CUDA_TEST_S, FIG4_S, LONG_S), each writing its files
# as it goes, so a step cut short keeps what it measured:
#   1. the CUDA tests (tests/test_cuda.py, tests/test_ragged_cache.py): fp32 logits/tokens against the
#      CPU, exactness with eviction disabled, the varlen kernel against the padded path;
#   2. OUT_DIR/fig4: vanilla (timed over its first 3 passes, extrapolated to 32), vanilla-ref (all-row
#      logits, the reference LLaDA forward; 2 passes), dllm-cache, dllm-cache-no-mop, fast-dllm-prefix,
#      maskkv (online) and maskkv-offline over full 32-step runs at 1k, 2k, 4k, 8k, 16k, 32k;
#   3. OUT_DIR/long: vanilla, dllm-cache, maskkv and maskkv-offline at 64k.
# All configurations of a step run in one process; CUDA peaks are torch.cuda.max_memory_allocated,
# reset per configuration, after one warm-up run each.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu-llada8b}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1   # works without `pip install -e .`
LOG="$OUT_DIR/log.txt"   # everything printed, in one file
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
timeout "${CUDA_TEST_S:-150}" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ragged_cache.py \
  2>&1 | tee -a "$LOG"
BENCH=(--arch llada-8b --device cuda --dtype bfloat16 --gen-length 32 --steps 32 --block-length 32 --budget 256
       --vanilla-steps 3 --ref-steps 2 --repeats 1 --warmup 1)
timeout "${FIG4_S:-330}" "$PY" -m maskkv.bench "${BENCH[@]}" --lengths 1k,2k,4k,8k,16k,32k \
  --systems vanilla,vanilla-ref,dllm-cache,dllm-cache-no-mop,fast-dllm-prefix,maskkv,maskkv-offline \
  --out "$OUT_DIR/fig4" 2>&1 | tee -a "$LOG"
timeout "${LONG_S:-150}" "$PY" -m maskkv.bench "${BENCH[@]}" --lengths 64k \
  --systems vanilla,dllm-cache,maskkv,maskkv-offline --out "$OUT_DIR/long" 2>&1 | tee -a "$LOG"
