#!/usr/bin/env bash
# LLaDA-8B shapes (random weights) in bf16 on one CUDA GPU: the CUDA tests, then the Figure 4 comparison
# 1k..32k, 64k and 128k, with every cache system's steady decode pass replayed from CUDA graphs (issue 23).
#
#   bash benchmarks/gpu_llada8b.sh [OUT_DIR]        # default: $OUT if set, else results/gpu-llada8b
#
# For an 80 GB+ GPU (A100/H100/H200). Everything lands in OUT_DIR (log.txt: everything printed). Each step
# runs under its own time limit (seconds, environment variables below; about 8.5 minutes in all) and writes
# its files as it goes, so a step cut short keeps what it measured:
#   1. CUDA_TEST_S (110): tests/test_cuda.py and tests/test_ragged_cache.py -> OUT_DIR/tests.txt (junit XML too):
#      fp32 logits/tokens against the CPU, exactness with eviction disabled, the varlen kernel, CUDA-graph
#      replay against eager steps (identical tokens), no host sync in a CUDA decode step;
#   2. OPS_S (50): OUT_DIR/ops: every system at 1k, eager, with aten ops and host syncs per decode step;
#   3. FIG4_S (190): OUT_DIR/fig4: vanilla (3 passes, extrapolated), dllm-cache, fast-dllm-prefix, maskkv
#      (online) and maskkv-offline at 1k..32k, cache systems captured (--cuda-graphs);
#   4. LONG_S (110): OUT_DIR/long: vanilla, fast-dllm-prefix, maskkv, maskkv-offline at 64k, captured;
#   5. HUGE_S (60): OUT_DIR/huge: maskkv-offline at 128k (no warm-up run), captured.
# In-process runs: CUDA peaks are torch.cuda.max_memory_allocated, reset per configuration; the rows'
# first_pass_increment_bytes is the peak of the first pass + one decode step over the loaded model.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu-llada8b}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1   # works without `pip install -e .`
LOG="$OUT_DIR/log.txt"
START=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$LOG"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
timeout "${CUDA_TEST_S:-110}" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml" \
  tests/test_cuda.py tests/test_ragged_cache.py 2>&1 | tee "$OUT_DIR/tests.txt" | tee -a "$LOG"
BENCH=(--arch llada-8b --device cuda --dtype bfloat16 --gen-length 32 --steps 32 --block-length 32 --budget 256
       --vanilla-steps 3 --repeats 1)
timeout "${OPS_S:-50}" "$PY" -m maskkv.bench "${BENCH[@]}" --warmup 1 --lengths 1k --count-ops \
  --systems vanilla,dllm-cache,fast-dllm-prefix,fast-dllm-dual,maskkv,maskkv-offline \
  --out "$OUT_DIR/ops" 2>&1 | tee -a "$LOG"
timeout "${FIG4_S:-190}" "$PY" -m maskkv.bench "${BENCH[@]}" --warmup 1 --no-count-ops --cuda-graphs \
  --lengths 1k,2k,4k,8k,16k,32k --systems vanilla,dllm-cache,fast-dllm-prefix,maskkv,maskkv-offline \
  --out "$OUT_DIR/fig4" 2>&1 | tee -a "$LOG"
timeout "${LONG_S:-110}" "$PY" -m maskkv.bench "${BENCH[@]}" --warmup 1 --no-count-ops --cuda-graphs \
  --lengths 64k --systems vanilla,fast-dllm-prefix,maskkv,maskkv-offline --out "$OUT_DIR/long" 2>&1 | tee -a "$LOG"
timeout "${HUGE_S:-60}" "$PY" -m maskkv.bench "${BENCH[@]}" --warmup 0 --no-count-ops --cuda-graphs \
  --lengths 128k --systems maskkv-offline --out "$OUT_DIR/huge" 2>&1 | tee -a "$LOG"
echo "gpu_llada8b.sh: $(( $(date +%s) - START )) s in all" | tee -a "$LOG"
