#!/usr/bin/env bash
# LLaDA-8B shapes (random weights) in bf16 on one CUDA GPU: the CUDA tests, then the Figure 4 comparison
# 1k..32k, 64k and 128k, with every cache system's steady decode pass replayed from CUDA graphs (issue 23).
#
#   bash benchmarks/gpu_llada8b.sh [OUT_DIR]            # default: $OUT if set, else results/gpu-llada8b
#   bash benchmarks/gpu_llada8b.sh --dry-run [OUT_DIR]  # or DRY_RUN=1: the same steps on the CPU (~1 min)
#
# For an 80 GB+ GPU (A100/H100/H200). Everything lands in OUT_DIR (log.txt: everything printed). Each step
# runs under its own time limit (seconds, environment variables below; 520 s in all, under 9 minutes with
# the start-up) and writes its files as it goes, so a step cut short keeps what it measured:
#   1. CUDA_TEST_S (110): tests/test_cuda.py and tests/test_ragged_cache.py -> OUT_DIR/tests.txt (junit XML too):
#      fp32 logits/tokens against the CPU, exactness with eviction disabled, the varlen kernel, CUDA-graph
#      replay against eager steps (identical tokens), no host sync in a CUDA decode step;
#   2. OPS_S (50): OUT_DIR/ops: every system at 1k, eager, with aten ops and host syncs per decode step;
#   3. FIG4_S (190): OUT_DIR/fig4: vanilla (3 passes, extrapolated), dllm-cache, fast-dllm-prefix, maskkv
#      (online) and maskkv-offline at 1k..32k, cache systems captured (--cuda-graphs);
#   4. LONG_S (110): OUT_DIR/long: vanilla, fast-dllm-prefix, maskkv, maskkv-offline at 64k, captured;
#   5. HUGE_S (60): OUT_DIR/huge: maskkv-offline at 128k (no warm-up run), captured.
# A step past its limit gets SIGINT (pytest then still writes its junit XML), SIGKILL 2 s later; pytest runs
# verbose, so a killed run's tests.txt still says which tests passed.
# OUT_DIR/steps.tsv: each step's exit status (124: cut short by its limit), seconds and limit. At the end
# benchmarks/gpu_report.py reads the folder and writes OUT_DIR/targets.md (and targets.json): the issue-23
# target table, each row PASS, FAIL or MISSING.
# In-process runs: CUDA peaks are torch.cuda.max_memory_allocated, reset per configuration; the rows'
# first_pass_increment_bytes is the peak of the first pass + one decode step over the loaded model.
#
# The dry run (--dry-run or DRY_RUN=1) checks the script itself without a GPU: every step and every bench
# flag above, then the same options appended with CPU stand-ins (later options win): llada-tiny in float32
# on the CPU, one thread, in one process as on CUDA, gen/steps/block 8, budget 32, prompts of 128-512 tokens
# for 1k..128k, short limits, and pytest only the CUDA-named tests (they skip without a GPU). On the CPU
# --cuda-graphs is accepted and ignored, so every row says captured: false.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
[[ "$DRY" == "0" || -z "$DRY" ]] && DRY=0 || DRY=1
OUT_DIR="${1:-${OUT:-results/gpu-llada8b}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1   # works without `pip install -e .`
LOG="$OUT_DIR/log.txt"
STEPS="$OUT_DIR/steps.tsv"
START=$(date +%s)
if (( DRY )); then
  CUDA_TEST_S="${CUDA_TEST_S:-60}" OPS_S="${OPS_S:-60}" FIG4_S="${FIG4_S:-60}" LONG_S="${LONG_S:-40}"
  HUGE_S="${HUGE_S:-40}"
  TEST_SELECT=(-k cuda)
  DRY_BENCH=(--arch llada-tiny --device cpu --dtype float32 --threads 1 --no-isolate --gen-length 8 --steps 8
             --block-length 8 --budget 32)
else
  CUDA_TEST_S="${CUDA_TEST_S:-110}" OPS_S="${OPS_S:-50}" FIG4_S="${FIG4_S:-190}" LONG_S="${LONG_S:-110}"
  HUGE_S="${HUGE_S:-60}"
  TEST_SELECT=()
  DRY_BENCH=()
fi
printf 'step\trc\tseconds\tlimit_s\n' > "$STEPS"
{ (( DRY )) && echo "gpu_llada8b.sh: DRY RUN on the CPU (llada-tiny, float32, short prompts)"
  echo "gpu_llada8b.sh: step limits $(( CUDA_TEST_S + OPS_S + FIG4_S + LONG_S + HUGE_S )) s in all" \
       "(tests $CUDA_TEST_S, ops $OPS_S, fig4 $FIG4_S, long $LONG_S, huge $HUGE_S)"
  if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  else echo "nvidia-smi: not available"; fi
} 2>&1 | tee "$LOG"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY

# step NAME LIMIT_S COMMAND...: COMMAND under its limit (SIGINT, then SIGKILL 2 s later), its exit status and
# seconds appended to steps.tsv. The command's output goes to the log by the caller.
step() {
  local name=$1 limit=$2 began rc
  shift 2
  began=$(date +%s)
  timeout -s INT -k 2 "$limit" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - began ))" "$limit" >> "$STEPS"
  (( rc == 124 || rc == 137 )) && echo "gpu_llada8b.sh: step $name cut short by its $limit s limit" >&2
  return 0
}

# bench NAME LIMIT_S DRY_LENGTHS OPTIONS...: one `maskkv bench` step into OUT_DIR/NAME.
BENCH=(--arch llada-8b --device cuda --dtype bfloat16 --gen-length 32 --steps 32 --block-length 32 --budget 256
       --vanilla-steps 3 --repeats 1)
bench() {
  local name=$1 limit=$2 dry_lengths=$3
  shift 3
  local extra=(${DRY_BENCH[@]+"${DRY_BENCH[@]}"})
  (( DRY )) && extra+=(--lengths "$dry_lengths")
  # MASKKV_DEBUG=1: a configuration that fails prints its traceback into the log (its row keeps the error)
  step "$name" "$limit" env MASKKV_DEBUG=1 "$PY" -m maskkv.bench "${BENCH[@]}" "$@" ${extra[@]+"${extra[@]}"} \
    --out "$OUT_DIR/$name" 2>&1 | tee -a "$LOG"
}

step tests "$CUDA_TEST_S" "$PY" -m pytest -v -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml" \
  tests/test_cuda.py tests/test_ragged_cache.py ${TEST_SELECT[@]+"${TEST_SELECT[@]}"} 2>&1 \
  | tee "$OUT_DIR/tests.txt" | tee -a "$LOG"
bench ops "$OPS_S" 128 --warmup 1 --lengths 1k --count-ops \
  --systems vanilla,dllm-cache,fast-dllm-prefix,fast-dllm-dual,maskkv,maskkv-offline
bench fig4 "$FIG4_S" 128,256 --warmup 1 --no-count-ops --cuda-graphs \
  --lengths 1k,2k,4k,8k,16k,32k --systems vanilla,dllm-cache,fast-dllm-prefix,maskkv,maskkv-offline
bench long "$LONG_S" 384 --warmup 1 --no-count-ops --cuda-graphs \
  --lengths 64k --systems vanilla,fast-dllm-prefix,maskkv,maskkv-offline
bench huge "$HUGE_S" 512 --warmup 0 --no-count-ops --cuda-graphs \
  --lengths 128k --systems maskkv-offline
echo "gpu_llada8b.sh: $(( $(date +%s) - START )) s in all" | tee -a "$LOG"
timeout 30 "$PY" benchmarks/gpu_report.py "$OUT_DIR" 2>&1 | tee -a "$LOG"
