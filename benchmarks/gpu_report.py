"""The issue-23 target table of one ``benchmarks/gpu_llada8b.sh`` folder: OUT/targets.md and OUT/targets.json.

    python benchmarks/gpu_report.py OUT_DIR        # prints the markdown; the script runs it at its end

Reads what the script wrote (``steps.tsv``, ``tests.xml``/``tests.txt``, ``{ops,fig4,long,huge}/results.json``)
and gives every target of issue 23's GPU part a row: measured, target, PASS / FAIL / MISSING (no row measured:
a step cut short by its limit, an error row, a file absent; for the memory targets an error row is a FAIL, as
out of memory is how they fail). The prompt lengths are the ones each step was asked for (its
``settings.lengths``; the GPU run's 1k..32k, 64k and 128k when a step wrote nothing), so a dry run's stand-in
lengths take the same roles: the shortest fig4 length is "1k", the longest "32k". Standard library only, and
it never fails on partial output.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
STEP_NAMES = ("tests", "ops", "fig4", "long", "huge")
# what each bench step of the GPU run is asked for (used when a step wrote no results.json at all)
GPU_LENGTHS = {"ops": [1024], "fig4": [1024, 2048, 4096, 8192, 16384, 32768], "long": [65536], "huge": [131072]}
GPU_SYSTEMS = {
    "ops": ["vanilla", "dllm-cache", "fast-dllm-prefix", "fast-dllm-dual", "maskkv", "maskkv-offline"],
    "fig4": ["vanilla", "dllm-cache", "fast-dllm-prefix", "maskkv", "maskkv-offline"],
    "long": ["vanilla", "fast-dllm-prefix", "maskkv", "maskkv-offline"],
    "huge": ["maskkv-offline"],
}
MASKKV = ("maskkv", "maskkv-offline")
NO_CACHE = ("vanilla", "vanilla-ref")  # systems without a cache: nothing to capture
# the thresholds
STEP_MS = 8.0
SPEEDUP_SHORT, SPEEDUP_LONG = 2.5, 25.0
EVICTION_MS = 15.0
PEAK_OVER_WEIGHTS_GIB = 3.5
OPS_PER_LAYER = 50.0
# the row fields this report reads (tests check a real run's rows carry them all)
ROW_FIELDS = ("config", "tokens_per_s", "first_pass_s", "decode_step_mean_s", "decode_step_median_s",
              "peak_memory_bytes", "model_memory_bytes", "first_pass_increment_bytes", "model", "captured",
              "capture_failure", "ops_per_step", "extrapolated", "error")  # fmt: skip


@dataclass
class TargetRow:
    """One line of the table."""

    group: str
    name: str
    measured: str
    target: str
    status: str  # PASS, FAIL or MISSING
    note: str = ""


@dataclass
class Step:
    """One bench step's folder: its rows (errors included) and the lengths and systems it was asked for."""

    name: str
    document: dict[str, Any] | None
    problem: str | None  # why there is no document
    lengths: list[int]
    systems: list[str]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for r in (self.document or {}).get("rows", []) if isinstance(r, dict) and "config" in r]

    def row(self, system: str, length: int) -> dict[str, Any] | None:
        """The measured (non-error) row of ``system`` at ``length``, or None."""
        for r in self.rows:
            c = r["config"]
            if c.get("system") == system and c.get("prompt_length") == length and not r.get("error"):
                return r
        return None

    def error(self, system: str, length: int) -> str | None:
        """The error of ``system`` at ``length`` if its row is an error row (e.g. out of memory)."""
        for r in self.rows:
            c = r["config"]
            if c.get("system") == system and c.get("prompt_length") == length and r.get("error"):
                return str(r["error"])
        return None

    def why_missing(self, system: str, length: int, status: dict[str, dict[str, Any]]) -> str:
        """A short reason for a missing row: the error, the step's limit, or the absent file."""
        error = self.error(system, length)
        if error is not None:
            return f"{self.name}: error: {error[:160]}"
        return f"{self.name}: {step_outcome(self.name, status) or self.problem or 'no row'}"


# ----- reading --------------------------------------------------------------------------------------


def read_steps(folder: Path) -> dict[str, dict[str, Any]]:
    """``steps.tsv``: ``{step: {"rc", "seconds", "limit_s"}}`` (empty if absent or unreadable)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = (folder / "steps.tsv").read_text().splitlines()
    except OSError:
        return out
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        try:
            out[parts[0]] = {"rc": int(parts[1]), "seconds": int(parts[2]), "limit_s": int(parts[3])}
        except ValueError:
            continue
    return out


def step_outcome(name: str, status: dict[str, dict[str, Any]]) -> str | None:
    """``"cut short by its 60 s limit"``, ``"exited with 1"``, ``"finished"``, or None if not recorded."""
    s = status.get(name)
    if s is None:
        return None
    if s["rc"] in (124, 137):
        return f"cut short by its {s['limit_s']} s limit after {s['seconds']} s"
    return "finished" if s["rc"] == 0 else f"exited with {s['rc']} after {s['seconds']} s"


def read_step(folder: Path, name: str) -> Step:
    """``folder/name/results.json`` (a partial one too); never raises."""
    path = folder / name / "results.json"
    document, problem = None, None
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            document, problem = None, f"{path} holds no JSON object"
    except FileNotFoundError:
        problem = f"no {path.relative_to(folder)}"
    except (OSError, ValueError) as err:
        problem = f"{path.relative_to(folder)} unreadable ({type(err).__name__})"
    settings = (document or {}).get("settings") or {}
    lengths = [n for n in settings.get("lengths") or [] if isinstance(n, int)] or GPU_LENGTHS[name]
    systems = [s for s in settings.get("systems") or [] if isinstance(s, str)] or GPU_SYSTEMS[name]
    return Step(name, document, problem, lengths, systems)


def read_tests(folder: Path) -> dict[str, Any] | None:
    """Passed/failed/errors/skipped of the CUDA tests: the junit XML, else pytest's summary line."""
    try:
        root = ET.parse(folder / "tests.xml").getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        count = {k: sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        failing = [f"{case.get('classname', '')}::{case.get('name', '')}" for s in suites for case in s.iter("testcase")
                   if case.find("failure") is not None or case.find("error") is not None]  # fmt: skip
        passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
        return {"passed": passed, "failed": count["failures"], "errors": count["errors"],
                "skipped": count["skipped"], "failing": failing, "source": "tests.xml"}  # fmt: skip
    except (OSError, ET.ParseError, ValueError):
        pass
    try:
        text = (folder / "tests.txt").read_text()
    except OSError:
        return None
    stats = r"\d+ (passed|failed|skipped|errors?)\b.* in [\d.]+s"
    summary = [line for line in text.splitlines() if re.search(stats, line)]
    if summary:  # pytest's last line: "3 passed, 1 failed, 2 skipped in 9.1s"
        found = {word.rstrip("s") if word.startswith("error") else word: int(n)
                 for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", summary[-1])}  # fmt: skip
        source = "tests.txt (pytest's summary)"
    else:  # cut short: count pytest -v's per-test lines
        outcomes = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR)\b", text)
        if not outcomes:
            return None
        found = {"passed": outcomes.count("PASSED"), "failed": outcomes.count("FAILED"),
                 "skipped": outcomes.count("SKIPPED"), "error": outcomes.count("ERROR")}  # fmt: skip
        source = "tests.txt (pytest -v lines; no summary: cut short?)"
    failing = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M))
                     | set(re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)\b", text, flags=re.M)))  # fmt: skip
    return {"passed": found.get("passed", 0), "failed": found.get("failed", 0), "errors": found.get("error", 0),
            "skipped": found.get("skipped", 0), "failing": failing, "source": source}  # fmt: skip


# ----- judging --------------------------------------------------------------------------------------


def _length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _judge(value: float | None, threshold: float, op: str) -> str:
    if value is None:
        return "MISSING"
    return "PASS" if (value <= threshold if op == "<=" else value >= threshold) else "FAIL"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _gib(n: float | None) -> float | None:
    return None if n is None else n / GIB


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _get(row: dict[str, Any] | None, key: str) -> Any:
    value = None if row is None else row.get(key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _why(step: Step, length: int, status: dict[str, dict[str, Any]], rows: dict[str, Any]) -> str:
    """Why the rows of ``{system: row or None}`` that are None are missing, joined."""
    return "; ".join(step.why_missing(system, length, status) for system, row in rows.items() if row is None)


def decode_step_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """Mean decode step of MaskKV (online, offline) <= 8 ms at every fig4 and long length (1k-64k)."""
    rows = []
    for system in MASKKV:
        for step in (steps["fig4"], steps["long"]):
            for length in step.lengths:
                r = step.row(system, length)
                mean, median = _ms(_get(r, "decode_step_mean_s")), _ms(_get(r, "decode_step_median_s"))
                note = "" if r is None else f"median {_fmt(median, ' ms', 2)} (the mean includes the capture passes)"
                status_ = _judge(mean, STEP_MS, "<=")
                if r is None:
                    note = step.why_missing(system, length, status)
                rows.append(TargetRow("decode step", f"{system} mean decode step @ {_length(length)}",
                                      _fmt(mean, " ms", 2), f"<= {STEP_MS:g} ms", status_, note))  # fmt: skip
    return rows


def speedup_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """MaskKV / no cache (vanilla) tokens/s: >= 2.5x at 1k and >= 25x at 32k (the shortest and longest fig4
    lengths); MaskKV / Fast-dLLM prefix >= 1x at every fig4 and long length."""
    rows = []
    fig4 = steps["fig4"]
    ends = [(min(fig4.lengths), SPEEDUP_SHORT), (max(fig4.lengths), SPEEDUP_LONG)]
    for system in MASKKV:
        for length, threshold in ends:
            m, v = fig4.row(system, length), fig4.row("vanilla", length)
            value = _ratio(_get(m, "tokens_per_s"), _get(v, "tokens_per_s"))
            note = (f"{_fmt(_get(m, 'tokens_per_s'), '', 2)} vs {_fmt(_get(v, 'tokens_per_s'), '', 2)} tokens/s"
                    + (" (vanilla extrapolated from its first passes)" if v and v.get("extrapolated") else ""))
            if value is None:
                note = _why(fig4, length, status, {system: m, "vanilla": v})
            rows.append(TargetRow("speed-up", f"{system} / no cache @ {_length(length)}", _fmt(value, "x", 2),
                                  f">= {threshold:g}x", _judge(value, threshold, ">="), note))  # fmt: skip
    for system in MASKKV:
        for step in (fig4, steps["long"]):
            for length in step.lengths:
                m, p = step.row(system, length), step.row("fast-dllm-prefix", length)
                value = _ratio(_get(m, "tokens_per_s"), _get(p, "tokens_per_s"))
                note = f"{_fmt(_get(m, 'tokens_per_s'), '', 2)} vs {_fmt(_get(p, 'tokens_per_s'), '', 2)} tokens/s"
                if value is None:
                    note = _why(step, length, status, {system: m, "fast-dllm-prefix": p})
                rows.append(TargetRow("vs Fast-dLLM", f"{system} / fast-dllm-prefix @ {_length(length)}",
                                      _fmt(value, "x", 2), ">= 1x", _judge(value, 1.0, ">="), note))  # fmt: skip
    return rows


def eviction_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """What MaskKV's scoring and eviction add to the first pass: ``first_pass_s`` of maskkv(-offline) less
    dLLM-Cache's (the same full forward without a press) at each fig4 length, <= 15 ms."""
    rows = []
    fig4 = steps["fig4"]
    for system in MASKKV:
        for length in fig4.lengths:
            m, d = fig4.row(system, length), fig4.row("dllm-cache", length)
            a, b = _ms(_get(m, "first_pass_s")), _ms(_get(d, "first_pass_s"))
            value = None if a is None or b is None else a - b
            note = f"first pass {_fmt(a, ' ms')} vs dllm-cache {_fmt(b, ' ms')} (one timed run each)"
            if value is None:
                note = _why(fig4, length, status, {system: m, "dllm-cache": d})
            rows.append(TargetRow("eviction", f"{system} eviction added to the first pass @ {_length(length)}",
                                  _fmt(value, " ms"), f"<= {EVICTION_MS:g} ms", _judge(value, EVICTION_MS, "<="),
                                  note))  # fmt: skip
    return rows


def weights_bytes(row: dict[str, Any]) -> int | None:
    """Parameters x bytes per element of the row's model (the weights alone)."""
    model = row.get("model") or {}
    params, size = model.get("parameters"), model.get("element_size")
    return params * size if isinstance(params, int) and isinstance(size, int) else None


def memory_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """Offline MaskKV's peak at 64k (the long step's length) <= weights + 3.5 GiB; the 128k row ran."""
    rows = []
    long, huge = steps["long"], steps["huge"]
    for length in long.lengths:
        r = long.row("maskkv-offline", length)
        peak, weights = _get(r, "peak_memory_bytes"), None if r is None else weights_bytes(r)
        value = None if peak is None or weights is None else (peak - weights) / GIB
        if r is None:
            note = long.why_missing("maskkv-offline", length, status)
        elif value is None:
            note = f"no peak measured ({r.get('memory_measure') or 'peak_memory_bytes is null'})"
        else:
            note = (f"peak {peak / GIB:.2f} GiB, weights {weights / GIB:.2f} GiB (allocated after loading "
                    f"{_fmt(_gib(_get(r, 'model_memory_bytes')), ' GiB', 2)}); first pass + one step "
                    f"{_fmt(_gib(_get(r, 'first_pass_increment_bytes')), ' GiB', 2)}"
                    " over the loaded model")  # fmt: skip
        failed = r is None and long.error("maskkv-offline", length) is not None  # e.g. out of memory
        rows.append(TargetRow("memory", f"maskkv-offline peak over the weights @ {_length(length)}",
                              _fmt(value, " GiB", 2), f"<= {PEAK_OVER_WEIGHTS_GIB:g} GiB",
                              "FAIL" if failed else _judge(value, PEAK_OVER_WEIGHTS_GIB, "<="), note))  # fmt: skip
    for length in huge.lengths:
        r = huge.row("maskkv-offline", length)
        note = huge.why_missing("maskkv-offline", length, status) if r is None else (
            f"{_fmt(_get(r, 'tokens_per_s'), ' tokens/s', 2)}, first pass {_fmt(_ms(_get(r, 'first_pass_s')), ' ms')}, "
            f"step {_fmt(_ms(_get(r, 'decode_step_mean_s')), ' ms', 2)}, peak "
            f"{_fmt(_gib(_get(r, 'peak_memory_bytes')), ' GiB', 2)}")  # fmt: skip
        ran = "PASS" if r else "FAIL" if huge.error("maskkv-offline", length) is not None else "MISSING"
        rows.append(TargetRow("memory", f"maskkv-offline ran @ {_length(length)}", "yes" if r else "no", "yes",
                              ran, note))  # fmt: skip
    return rows


def capture_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """Which cache systems ran captured (CUDA graphs) in fig4, long and huge: every one should."""
    rows = []
    systems: list[str] = []
    for step in (steps["fig4"], steps["long"], steps["huge"]):
        systems += [s for s in step.systems if s not in NO_CACHE and s not in systems]
    for system in systems:
        seen, captured, failures = [], [], set()
        for step in (steps["fig4"], steps["long"], steps["huge"]):
            for length in step.lengths:
                r = step.row(system, length) if system in step.systems else None
                if r is None:
                    continue
                seen.append(length)
                if r.get("captured"):
                    captured.append(length)
                elif r.get("capture_failure"):
                    failures.add(str(r["capture_failure"])[:160])
        lengths = lambda ns: ",".join(_length(n) for n in ns) or "none"  # noqa: E731
        if not seen:
            rows.append(TargetRow("CUDA graphs", f"{system} ran captured", "-", "every row", "MISSING",
                                  "no measured row in fig4/long/huge"))  # fmt: skip
            continue
        status_ = "PASS" if len(captured) == len(seen) else "FAIL"
        note = f"captured at {lengths(captured)} of {lengths(seen)}"
        if failures:
            note += "; capture_failure: " + " | ".join(sorted(failures))
        elif status_ == "FAIL":
            note += "; no capture_failure recorded (off CUDA --cuda-graphs is ignored)"
        rows.append(TargetRow("CUDA graphs", f"{system} ran captured", f"{len(captured)}/{len(seen)} rows",
                              "every row", status_, note))  # fmt: skip
    return rows


def test_rows(folder: Path, status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """The CUDA tests (tests/test_cuda.py, tests/test_ragged_cache.py): none failed, some passed."""
    t = read_tests(folder)
    if t is None:
        return [TargetRow("CUDA tests", "CUDA tests", "-", "0 failed, >= 1 passed", "MISSING",
                          f"no tests.xml or pytest summary; tests {step_outcome('tests', status) or 'not recorded'}")]
    measured = f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"
    bad = t["failed"] + t["errors"]
    note = f"from {t['source']}"
    if step_outcome("tests", status) not in (None, "finished"):
        note += f"; tests {step_outcome('tests', status)}"
    if t["failing"]:
        note += "; failing: " + ", ".join(t["failing"][:8]) + (" ..." if len(t["failing"]) > 8 else "")
    status_ = "FAIL" if bad or t["passed"] < 1 else "PASS"
    if not bad and t["passed"] < 1:
        note += "; nothing passed (all skipped: no CUDA GPU?)"
    return [TargetRow("CUDA tests", "CUDA tests", measured, "0 failed, >= 1 passed", status_, note)]


def ops_rows(steps: dict[str, Step], status: dict[str, dict[str, Any]]) -> list[TargetRow]:
    """Eager aten ops and host syncs per decode step at 1k (the ops step): no system syncs in a step;
    MaskKV's ops per layer per step <= 50 (indicative: the issue's count is on a 3-layer model, where the
    sampler's ops weigh more per layer than on LLaDA-8B's 32)."""
    rows = []
    ops = steps["ops"]
    for length in ops.lengths:
        for system in ops.systems:
            r = ops.row(system, length)
            counts = None if r is None else r.get("ops_per_step")
            if not isinstance(counts, dict):
                counts = {}
                note = ops.why_missing(system, length, status) if r is None else "no ops_per_step (--no-count-ops?)"
            else:
                note = (f"{_fmt(counts.get('ops_per_layer_per_step'))} ops per layer per step (max "
                        f"{_fmt(counts.get('ops_per_layer_per_step_max'))}), {counts.get('steady_steps')} steady steps")
                reasons = counts.get("sync_ops") or {}
                if reasons:
                    note += "; " + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
            syncs = _get(counts, "syncs_per_step_max")
            rows.append(TargetRow("ops/syncs", f"{system} host syncs per decode step @ {_length(length)}",
                                  _fmt(syncs, "", 0), "0", _judge(syncs, 0, "<="), note))  # fmt: skip
            if system == "maskkv":
                value = _get(counts, "ops_per_layer_per_step_max")
                rows.append(TargetRow("ops/syncs", f"maskkv aten ops per layer per decode step @ {_length(length)}",
                                      _fmt(value), f"<= {OPS_PER_LAYER:g}", _judge(value, OPS_PER_LAYER, "<="),
                                      "indicative: the issue's count is on a 3-layer model"
                                      + ("" if value is not None else f"; {note}")))  # fmt: skip
    return rows


def evaluate(folder: Path) -> dict[str, Any]:
    """Every target row of the folder, the per-step outcomes, the decode-step matrix and the machine."""
    status = read_steps(folder)
    steps = {name: read_step(folder, name) for name in STEP_NAMES if name != "tests"}
    rows = (test_rows(folder, status) + ops_rows(steps, status) + decode_step_rows(steps, status)
            + speedup_rows(steps, status) + eviction_rows(steps, status) + memory_rows(steps, status)
            + capture_rows(steps, status))  # fmt: skip
    machine, device = {}, None
    for step in steps.values():
        if step.document:
            machine = step.document.get("machine") or machine
            device = (step.document.get("settings") or {}).get("device") or device
            break
    return {"folder": str(folder), "machine": machine, "device": device, "dry_run": device == "cpu",
            "steps": {name: {**status.get(name, {}), "outcome": step_outcome(name, status),
                             **({} if name == "tests" else _step_summary(steps[name]))} for name in STEP_NAMES},
            "decode_step_ms": _decode_matrix(steps), "rows": [asdict(r) for r in rows]}  # fmt: skip


def _step_summary(step: Step) -> dict[str, Any]:
    wanted = len(step.lengths) * len(step.systems)
    errors = [r for r in step.rows if r.get("error")]
    return {"rows": len(step.rows) - len(errors), "errors": len(errors), "configurations": wanted,
            "complete": None if step.document is None else bool(step.document.get("complete")),
            "problem": step.problem}  # fmt: skip


def _decode_matrix(steps: dict[str, Step]) -> dict[str, dict[str, float | None]]:
    """``{system: {length: mean decode step ms}}`` over fig4, long and huge."""
    out: dict[str, dict[str, float | None]] = {}
    for step in (steps["fig4"], steps["long"], steps["huge"]):
        for system in step.systems:
            for length in step.lengths:
                out.setdefault(system, {})[_length(length)] = _ms(_get(step.row(system, length), "decode_step_mean_s"))
    return out


# ----- output ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(result: dict[str, Any]) -> str:
    """The report as markdown: header, counts, steps, decode-step matrix, target rows."""
    rows = result["rows"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "MISSING")}
    machine = result["machine"] or {}
    where = machine.get("gpu") or machine.get("cpu") or "unknown machine"
    git = (machine.get("git") or {}).get("commit")
    lines = ["# Issue 23 GPU targets", ""]
    if result["dry_run"]:
        lines += ["**DRY RUN on the CPU** (llada-tiny, float32, stand-in lengths): the numbers check the script "
                  "and this report, not the targets.", ""]  # fmt: skip
    lines += [f"Folder `{result['folder']}`; {where}; torch {machine.get('torch', '?')}; "
              f"commit {git[:10] if git else '?'}.", "",
              f"**{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['MISSING']} MISSING**", "",
              f"Steps took {sum(s.get('seconds', 0) for s in result['steps'].values())} s of their "
              f"{sum(s.get('limit_s', 0) for s in result['steps'].values())} s of limits.", "",
              "| step | outcome | seconds | limit s | rows | errors | complete |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in result["steps"].items():
        outcome = s.get("outcome") or "not recorded"
        if s.get("problem") and not s.get("rows"):
            outcome += f" ({s['problem']})"
        rows_ = "-" if "configurations" not in s else f"{s['rows']}/{s['configurations']}"
        complete = {True: "yes", False: "no", None: "-"}[s.get("complete")]
        lines.append(f"| {name} | {_cell(outcome)} | {s.get('seconds', '-')} | {s.get('limit_s', '-')} | {rows_} | "
                     f"{s.get('errors', '-')} | {complete} |")  # fmt: skip
    matrix = result["decode_step_ms"]
    lengths: list[str] = []
    for per in matrix.values():
        lengths += [n for n in per if n not in lengths]
    lines += ["", f"Mean decode step, ms (target <= {STEP_MS:g} ms at 1k-64k for MaskKV):", "",
              "| system | " + " | ".join(lengths) + " |", "|---|" + "---|" * len(lengths)]  # fmt: skip
    for system, per in matrix.items():
        lines.append(f"| {system} | " + " | ".join(_fmt(per.get(n), "", 2) for n in lengths) + " |")
    lines += ["", "| group | target | measured | threshold | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['group']} | {_cell(r['name'])} | {_cell(r['measured'])} | {_cell(r['target'])} | "
                     f"**{r['status']}** | {_cell(r['note'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python benchmarks/gpu_report.py OUT_DIR   (the folder benchmarks/gpu_llada8b.sh wrote)",
              file=sys.stderr)  # fmt: skip
        return 2
    folder = Path(args[0])
    if not folder.is_dir():
        print(f"gpu_report: {folder} is not a folder (give the OUT_DIR of benchmarks/gpu_llada8b.sh)", file=sys.stderr)
        return 2
    result = evaluate(folder)
    text = to_markdown(result)
    print(text, end="")
    try:
        (folder / "targets.md").write_text(text)
        (folder / "targets.json").write_text(json.dumps(result, indent=1) + "\n")
    except OSError as err:
        print(f"gpu_report: could not write {folder / 'targets.md'}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
