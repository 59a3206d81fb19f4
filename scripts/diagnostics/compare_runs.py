"""Check that two tiny-model training runs are the same run: their logs step by step and their exported weights.

    python scripts/diagnostics/compare_runs.py RUN_A RUN_B [--per-step-only]

Each run is a ``maskkv train-tiny --out`` folder. Log rows are matched by step (a one-pass probe row by its
step too) and compared in every field but the wall time. ``--per-step-only`` compares only what one step
determines (gradient norm, learning rate, prompt length, stage) and the probes: the running means of the loss
and accuracies in runs resumed before 2026-11-29 restarted at each resume, so only those fields differ there.
Exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

PER_STEP = ("gnorm", "lr", "tokens", "stage")


def read_log(run: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training rows, probe rows) of ``run/log.jsonl`` by step, without the wall time."""
    path = run / "log.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass a folder written by `maskkv train-tiny --out`")
    train, probes = {}, {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"{path}:{number} is not a JSON row") from None
        row.pop("elapsed", None)
        (probes if "quick_eval_tokens" in row else train)[row["step"]] = row
    return train, probes


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--per-step-only", action="store_true",
                        help="compare gnorm/lr/tokens/stage and the probes, not the running means")
    args = parser.parse_args()
    (train_a, probes_a), (train_b, probes_b) = read_log(args.run_a), read_log(args.run_b)

    def same(a: dict, b: dict) -> bool:
        return all(a.get(k) == b.get(k) for k in PER_STEP) if args.per_step_only else a == b

    steps = sorted(set(train_a) & set(train_b))
    differ = [s for s in steps if not same(train_a[s], train_b[s])]
    probe_steps = sorted(set(probes_a) & set(probes_b))
    probe_differ = [s for s in probe_steps if probes_a[s] != probes_b[s]]
    what = "gnorm/lr/tokens/stage" if args.per_step_only else "every field but the wall time"
    print(f"log: {len(steps)} common steps (last {steps[-1] if steps else '-'}), {len(differ)} differ in {what}; "
          f"probes: {len(probe_steps)} common, {len(probe_differ)} differ")
    for s in differ[:3]:
        print(f"  step {s}:\n    {train_a[s]}\n    {train_b[s]}")
    for s in probe_differ[:3]:
        print(f"  probe at step {s}:\n    {probes_a[s]}\n    {probes_b[s]}")
    only = sorted(set(train_a) ^ set(train_b))
    if only:
        print(f"  {len(only)} steps logged by one run only (a run still going?), first {only[0]}")
    weights = [sha256(run / "model" / "model.safetensors") for run in (args.run_a, args.run_b)]
    if None in weights:
        print("export: not both runs have model/model.safetensors yet")
    else:
        print(f"export: model.safetensors {'identical' if weights[0] == weights[1] else 'DIFFERENT'} "
              f"(sha256 {weights[0][:16]}... / {weights[1][:16]}...)")
    return 1 if differ or probe_differ or (None not in weights and weights[0] != weights[1]) else 0


if __name__ == "__main__":
    sys.exit(main())
