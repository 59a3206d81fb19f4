#!/usr/bin/env bash
# LLaDA-8B shapes (random weights) in bf16 on one CUDA GPU, prompts 1k..32k: the Figure 4 comparison.
#
#   bash benchmarks/gpu_llada8b.sh [OUT_DIR]        # default: $OUT if set, else results/gpu-llada8b
#
# Prepared for an 80 GB+ GPU (A100/H100/H200: about 45 GB peak, at dLLM-Cache / 32k); about 3-5 minutes.
# All configurations run in one process (CUDA peaks come from torch.cuda.max_memory_allocated, reset
# per configuration), after one warm-up run each. vanilla is timed over its first 3 passes and
# vanilla-ref (all-row logits, the reference LLaDA forward) over 2, then extrapolated to 32 steps
# (marked "extrapolated": true in the JSON and * in the table): a vanilla step costs the same at
# every step. Everything else is timed over the full 32-step run.
# Writes OUT_DIR/results.json (+ results.csv, and figure.png when matplotlib is installed), even
# when a configuration fails (for example out of memory; it becomes an error row).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu-llada8b}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # works without `pip install -e .`
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/nvidia-smi.txt" || true
python - <<'PY' | tee "$OUT_DIR/versions.txt"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
# The varlen kernel for ragged per-head caches (MaskKV D10 b) against the padded path (seconds; needs pytest).
python -m pytest -q tests/test_ragged_cache.py 2>&1 | tee "$OUT_DIR/ragged_cuda_test.txt" || true
python -m maskkv.bench \
  --arch llada-8b --device cuda --dtype bfloat16 \
  --lengths 1k,2k,4k,8k,16k,32k \
  --systems vanilla,vanilla-ref,dllm-cache,dllm-cache-no-mop,fast-dllm-prefix,maskkv,maskkv-offline \
  --gen-length 32 --steps 32 --block-length 32 --budget 256 \
  --vanilla-steps 3 --ref-steps 2 --repeats 1 --warmup 1 \
  --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/log.txt"
