"""``benchmarks/gpu_llada8b.sh`` without a GPU: its dry run end to end, its GPU flags and time budget, a step
cut short by its limit, and ``benchmarks/gpu_report.py`` (the issue-23 target table) on synthetic folders."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_llada8b.sh"
BENCH_STEPS = ("ops", "fig4", "long", "huge")
STEPS = ("tests", *BENCH_STEPS)
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None or shutil.which("timeout") is None, reason="needs bash and timeout")

# The GPU run's `maskkv bench` options, step by step (issue 23; `--out OUT/<step>` follows each).
COMMON = ["--arch", "llada-8b", "--device", "cuda", "--dtype", "bfloat16", "--gen-length", "32", "--steps", "32",
          "--block-length", "32", "--budget", "256", "--vanilla-steps", "3", "--repeats", "1"]  # fmt: skip
GPU_BENCH = {
    "ops": ["--warmup", "1", "--lengths", "1k", "--count-ops",
            "--systems", "vanilla,dllm-cache,fast-dllm-prefix,fast-dllm-dual,maskkv,maskkv-offline"],
    "fig4": ["--warmup", "1", "--no-count-ops", "--cuda-graphs", "--lengths", "1k,2k,4k,8k,16k,32k",
             "--systems", "vanilla,dllm-cache,fast-dllm-prefix,maskkv,maskkv-offline"],
    "long": ["--warmup", "1", "--no-count-ops", "--cuda-graphs", "--lengths", "64k",
             "--systems", "vanilla,fast-dllm-prefix,maskkv,maskkv-offline"],
    "huge": ["--warmup", "0", "--no-count-ops", "--cuda-graphs", "--lengths", "128k", "--systems", "maskkv-offline"],
}  # fmt: skip
GPU_LIMITS = {"tests": 110, "ops": 50, "fig4": 190, "long": 110, "huge": 60}
DRY_LENGTHS = {"ops": "128", "fig4": "128,256", "long": "384", "huge": "512"}
DRY_OVERRIDES = ["--arch", "llada-tiny", "--device", "cpu", "--dtype", "float32", "--threads", "1", "--no-isolate",
                 "--gen-length", "8", "--steps", "8", "--block-length", "8", "--budget", "32"]  # fmt: skip


def _load_report():
    spec = importlib.util.spec_from_file_location("gpu_report", ROOT / "benchmarks" / "gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_report"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_report = _load_report()


def _env(**extra: str) -> dict[str, str]:
    limits = ("CUDA_TEST_S", "OPS_S", "FIG4_S", "LONG_S", "HUGE_S")
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "OUT", "PYTHON", *limits)}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHON": sys.executable, **extra})
    return env


def _run_script(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def _steps_tsv(folder: Path) -> dict[str, dict[str, int]]:
    lines = (folder / "steps.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["step", "rc", "seconds", "limit_s"]
    out = {}
    for line in lines[1:]:
        name, rc, seconds, limit = line.split("\t")
        out[name] = {"rc": int(rc), "seconds": int(seconds), "limit_s": int(limit)}
    return out


def _stub_python(folder: Path, *, sleep: bool) -> Path:
    """A PYTHON for the script: ``-m MODULE ...`` (pytest, maskkv.bench) is recorded (one JSON argv a line)
    and then either exits 0 or sleeps past any limit; the version print (a script on stdin) is skipped;
    the report runs in this interpreter."""
    log = folder / "calls.jsonl"
    stub = folder / "python-stub"
    record = f'"{sys.executable}" -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" >> "{log}"'
    stub.write_text("#!/usr/bin/env bash\n"
                    f'if [[ "${{1:-}}" == "-m" ]]; then {record}; {"exec sleep 60" if sleep else "exit 0"}; fi\n'
                    'if [[ "${1:-}" == "-" ]]; then cat > /dev/null; echo "python (stub)"; exit 0; fi\n'
                    f'exec "{sys.executable}" "$@"\n')  # fmt: skip
    stub.chmod(0o755)
    return stub


def _calls(folder: Path) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]


# ----- the dry run, end to end on the CPU -------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if BASH is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and timeout")
    out = tmp_path_factory.mktemp("gpu-dry")
    done = _run_script(["--dry-run", str(out)], _env(), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout + done.stderr


def test_dry_run_writes_every_steps_output(dry_run):
    out, _ = dry_run
    steps = _steps_tsv(out)
    assert list(steps) == list(STEPS)
    assert all(s["rc"] == 0 for s in steps.values()), steps  # nothing cut short, nothing failed
    for name in ("log.txt", "tests.txt", "tests.xml", "targets.md", "targets.json"):
        assert (out / name).stat().st_size > 0, name
    log = (out / "log.txt").read_text()
    assert "DRY RUN" in log and "step limits" in log and "s in all" in log
    for step in BENCH_STEPS:
        for name in ("results.json", "results.csv", "figure.png"):
            assert (out / step / name).stat().st_size > 0, f"{step}/{name}"
        document = json.loads((out / step / "results.json").read_text())
        settings = document["settings"]
        assert document["complete"] is True and settings["device"] == "cpu" and settings["dtype"] == "float32"
        assert settings["arch"] == "llada-tiny" and settings["isolate"] is False
        assert settings["lengths"] == [int(n) for n in DRY_LENGTHS[step].split(",")]
        # the GPU run's options are the ones used (the dry run only appends CPU stand-ins)
        gpu = GPU_BENCH[step]
        assert settings["systems"] == gpu[gpu.index("--systems") + 1].split(",")
        assert settings["warmup"] == int(gpu[gpu.index("--warmup") + 1])
        assert settings["cuda_graphs"] is ("--cuda-graphs" in gpu)
        assert settings["count_ops"] is ("--count-ops" in gpu)
        assert settings["vanilla_steps"] == 3 and settings["repeats"] == 1
        rows = document["rows"]
        assert len(rows) == len(settings["systems"]) * len(settings["lengths"])
        assert [r["error"] for r in rows] == [None] * len(rows)
        for row in rows:
            assert set(gpu_report.ROW_FIELDS) <= set(row), set(gpu_report.ROW_FIELDS) - set(row)
            assert row["config"]["cuda_graphs"] is settings["cuda_graphs"]
            # off CUDA --cuda-graphs is accepted and ignored: the rows say so, nothing failed to capture
            assert row["captured"] is False and row["capture_failure"] is None
            assert (row["ops_per_step"] is not None) is settings["count_ops"]


def test_dry_run_report_names_every_target_row(dry_run):
    out, output = dry_run
    text = (out / "targets.md").read_text()
    assert text in output  # printed as well (the script's last step)
    assert "DRY RUN on the CPU" in text
    result = json.loads((out / "targets.json").read_text())
    names = [r["name"] for r in result["rows"]]
    fig4, long, huge = (DRY_LENGTHS[s].split(",") for s in ("fig4", "long", "huge"))
    expected = ["CUDA tests", "maskkv aten ops per layer per decode step @ 128"]
    expected += [f"{s} host syncs per decode step @ 128" for s in GPU_BENCH["ops"][-1].split(",")]
    for system in ("maskkv", "maskkv-offline"):
        expected += [f"{system} mean decode step @ {n}" for n in fig4 + long]
        expected += [f"{system} / no cache @ {n}" for n in (fig4[0], fig4[-1])]
        expected += [f"{system} / fast-dllm-prefix @ {n}" for n in fig4 + long]
        expected += [f"{system} eviction added to the first pass @ {n}" for n in fig4]
    expected += [f"maskkv-offline peak over the weights @ {long[0]}", f"maskkv-offline ran @ {huge[0]}"]
    expected += [f"{s} ran captured" for s in ("dllm-cache", "fast-dllm-prefix", "maskkv", "maskkv-offline")]
    assert sorted(names) == sorted(expected)
    for name in expected:
        assert f"| {name} |" in text, name
    status = {r["name"]: r["status"] for r in result["rows"]}
    # every row measured, but the peak: an in-process CPU run has no peak (CUDA's is max_memory_allocated)
    missing = [n for n, s in status.items() if s == "MISSING"]
    assert missing == [f"maskkv-offline peak over the weights @ {long[0]}"]
    assert status[f"maskkv-offline ran @ {huge[0]}"] == "PASS"
    assert all(status[f"{s} ran captured"] == "FAIL" for s in ("dllm-cache", "maskkv"))  # nothing captured on CPU
    if not torch.cuda.is_available():
        tests = next(r for r in result["rows"] if r["name"] == "CUDA tests")
        assert tests["status"] == "FAIL" and "0 passed, 0 failed, 0 errors" in tests["measured"]
        assert "skipped" in tests["measured"] and "no CUDA GPU" in tests["note"]
    assert set(result["steps"]) == set(STEPS)
    assert all(result["steps"][s]["outcome"] == "finished" for s in STEPS)


# ----- the GPU invocation, recorded instead of run ---------------------------------------------------


@needs_bash
def test_the_gpu_run_keeps_its_flags_and_its_time_budget(tmp_path):
    """Without --dry-run the script runs exactly the issue's commands under 520 s of step limits (under 9
    minutes with the start-up, the device's 10-minute limit a command); the dry run runs the same
    commands with the CPU stand-ins appended (later options win)."""
    gpu, dry = tmp_path / "gpu", tmp_path / "dry"
    gpu.mkdir()
    dry.mkdir()
    done = _run_script([str(gpu / "out")], _env(PYTHON=str(_stub_python(gpu, sleep=False))), timeout=120)
    assert done.returncode == 0, done.stderr
    calls = _calls(gpu)
    assert len(calls) == 5
    tests, benches = calls[0], calls[1:]
    assert tests[:2] == ["-m", "pytest"] and tests[-2:] == ["tests/test_cuda.py", "tests/test_ragged_cache.py"]
    assert f"--junitxml={gpu / 'out' / 'tests.xml'}" in tests and "-k" not in tests
    for step, argv in zip(BENCH_STEPS, benches):
        assert argv == ["-m", "maskkv.bench", *COMMON, *GPU_BENCH[step], "--out", str(gpu / "out" / step)]
    limits = {name: s["limit_s"] for name, s in _steps_tsv(gpu / "out").items()}
    assert limits == GPU_LIMITS and sum(limits.values()) == 520
    log = (gpu / "out" / "log.txt").read_text()
    assert "step limits 520 s in all" in log and "DRY RUN" not in log
    assert (gpu / "out" / "targets.md").exists()  # the report ran on a folder with no results at all

    done = _run_script([str(dry / "out")], _env(PYTHON=str(_stub_python(dry, sleep=False)), DRY_RUN="1"), timeout=120)
    assert done.returncode == 0, done.stderr
    dry_calls = _calls(dry)
    assert dry_calls[0][-2:] == ["-k", "cuda"]
    for step, argv in zip(BENCH_STEPS, dry_calls[1:]):
        assert argv == ["-m", "maskkv.bench", *COMMON, *GPU_BENCH[step], *DRY_OVERRIDES, "--lengths",
                        DRY_LENGTHS[step], "--out", str(dry / "out" / step)]  # fmt: skip


@needs_bash
def test_a_step_past_its_limit_is_cut_short_and_every_target_reads_missing(tmp_path):
    stub = _stub_python(tmp_path, sleep=True)
    limits = {f"{name}_S": "1" for name in ("CUDA_TEST", "OPS", "FIG4", "LONG", "HUGE")}
    out = tmp_path / "out"
    done = _run_script([str(out)], _env(PYTHON=str(stub), **limits), timeout=120)
    assert done.returncode == 0, done.stderr
    steps = _steps_tsv(out)
    assert list(steps) == list(STEPS)
    assert all(s["rc"] == 124 and s["limit_s"] == 1 and s["seconds"] <= 4 for s in steps.values()), steps
    assert "step fig4 cut short by its 1 s limit" in (out / "log.txt").read_text()
    result = json.loads((out / "targets.json").read_text())
    assert {r["status"] for r in result["rows"]} == {"MISSING"}
    row = next(r for r in result["rows"] if r["name"] == "maskkv mean decode step @ 32k")
    assert "fig4: cut short by its 1 s limit" in row["note"]
    assert "**0 PASS, 0 FAIL" in (out / "targets.md").read_text()


# ----- the report on synthetic folders ----------------------------------------------------------------

GIB = 2**30
WEIGHTS = 8_000_000_000 * 2  # LLaDA-8B-like parameters x bf16
VANILLA_TPS = {1024: 27.0, 2048: 14.0, 4096: 7.0, 8192: 3.3, 16384: 1.4, 32768: 0.5, 65536: 0.17}


def _row(system: str, length: int, **over) -> dict:
    """A row with the fields :func:`maskkv.bench.runner.measure` writes that the report reads."""
    cache = system != "vanilla"
    tps = {"vanilla": VANILLA_TPS[length] if length in VANILLA_TPS else 0.05,
           "fast-dllm-prefix": 40.0 if length <= 4096 else 20.0}.get(system, 80.0 if length <= 4096 else 21.0)
    first = 0.001 * length / 16  # the same full forward for every system
    row = {
        "config": {"system": system, "prompt_length": length, "cuda_graphs": cache},
        "tokens_per_s": tps, "extrapolated": system == "vanilla",
        "first_pass_s": first + (0.010 if system.startswith("maskkv") else 0.0),
        "decode_step_mean_s": 0.0065 if cache else 1.0, "decode_step_median_s": 0.006 if cache else 1.0,
        "peak_memory_bytes": WEIGHTS + 3 * GIB, "model_memory_bytes": WEIGHTS + 2**20,
        "first_pass_increment_bytes": 2 * GIB, "model": {"parameters": 8_000_000_000, "element_size": 2},
        "captured": cache, "capture_failure": None, "ops_per_step": None, "memory_measure": "cuda", "error": None,
    }  # fmt: skip
    row.update(over)
    return row


def _ops(system: str, *, syncs: int = 0, per_layer: float = 40.0) -> dict:
    return _row(system, 1024, ops_per_step={
        "steady_steps": 5, "ops_per_step_mean": per_layer * 32, "ops_per_step_max": per_layer * 32,
        "ops_per_layer_per_step": per_layer, "ops_per_layer_per_step_max": per_layer,
        "syncs_per_step_mean": syncs, "syncs_per_step_max": syncs,
        "sync_ops": {"aten.nonzero.default": syncs} if syncs else {}, "syncs_outside_steps": 0})  # fmt: skip


def _write_folder(folder: Path, rows_by_step: dict[str, list[dict]], *, complete: bool = True,
                  tests: tuple[int, int, int] = (60, 0, 0), rc: dict[str, int] | None = None) -> Path:  # fmt: skip
    """A gpu_llada8b.sh-like folder: steps.tsv, tests.xml (tests, failures, skipped), results.json per step."""
    folder.mkdir(parents=True, exist_ok=True)
    rc = rc or {}
    lines = ["step\trc\tseconds\tlimit_s"]
    lines += [f"{s}\t{rc.get(s, 0)}\t{GPU_LIMITS[s] // 2}\t{GPU_LIMITS[s]}" for s in STEPS]
    (folder / "steps.tsv").write_text("\n".join(lines) + "\n")
    total, failures, skipped = tests
    failure = "<failure message='x'/>"
    cases = "".join(f'<testcase classname="tests.test_cuda" name="t{i}">{failure if i < failures else ""}</testcase>'
                    for i in range(total))  # fmt: skip
    (folder / "tests.xml").write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{total}" '
                                      f'failures="{failures}" errors="0" skipped="{skipped}">{cases}</testsuite>'
                                      "</testsuites>")  # fmt: skip
    for step, rows in rows_by_step.items():
        (folder / step).mkdir(exist_ok=True)
        document = {"machine": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11", "git": {"commit": "abc"}},
                    "settings": {"device": "cuda", "lengths": gpu_report.GPU_LENGTHS[step],
                                 "systems": gpu_report.GPU_SYSTEMS[step]},
                    "rows": rows, "complete": complete}  # fmt: skip
        (folder / step / "results.json").write_text(json.dumps(document))
    return folder


def _passing_rows() -> dict[str, list[dict]]:
    rows = {"ops": [_ops(s) for s in gpu_report.GPU_SYSTEMS["ops"]]}
    for step in ("fig4", "long", "huge"):
        rows[step] = [_row(s, n) for n in gpu_report.GPU_LENGTHS[step] for s in gpu_report.GPU_SYSTEMS[step]]
    return rows


def _status(folder: Path) -> dict[str, str]:
    return {r["name"]: r["status"] for r in gpu_report.evaluate(folder)["rows"]}


def test_report_passes_a_run_that_meets_every_target(tmp_path):
    folder = _write_folder(tmp_path / "run", _passing_rows())
    status = _status(folder)
    assert set(status.values()) == {"PASS"}, {n: s for n, s in status.items() if s != "PASS"}
    # 1 tests + 6 syncs + 1 ops + 2 x (7 steps + 2 speed-ups + 7 vs prefix + 6 evictions) + 2 memory + 4 captured
    assert len(status) == 1 + 6 + 1 + 2 * (7 + 2 + 7 + 6) + 2 + 4
    assert gpu_report.main([str(folder)]) == 0
    text = (folder / "targets.md").read_text()
    assert f"**{len(status)} PASS, 0 FAIL, 0 MISSING**" in text and "DRY RUN" not in text
    assert "| maskkv | 6.50 | 6.50 |" in text  # the decode-step matrix, ms
    assert "| maskkv-offline eviction added to the first pass @ 32k | 10.0 ms | <= 15 ms | **PASS**" in text


def test_report_fails_each_target_that_is_missed(tmp_path):
    rows = _passing_rows()
    rows["ops"] = [_ops(s, syncs=2 if s == "dllm-cache" else 0, per_layer=60.0 if s == "maskkv" else 40.0)
                   for s in gpu_report.GPU_SYSTEMS["ops"]]  # fmt: skip
    fig4, long = rows["fig4"], rows["long"]

    def set_(step_rows, system, length, **values):
        row = next(r for r in step_rows if (r["config"]["system"], r["config"]["prompt_length"]) == (system, length))
        row.update(values)

    set_(fig4, "maskkv", 2048, decode_step_mean_s=0.0091)  # > 8 ms
    set_(fig4, "maskkv", 1024, tokens_per_s=60.0)  # 60 / 27 < 2.5x (still above the prefix cache's 40)
    set_(fig4, "maskkv-offline", 32768, tokens_per_s=12.0)  # 12 / 0.5 = 24x < 25x, and below the prefix's 20
    set_(fig4, "maskkv-offline", 8192, first_pass_s=0.001 * 8192 / 16 + 0.020)  # eviction 20 ms
    set_(long, "maskkv-offline", 65536, peak_memory_bytes=WEIGHTS + 4 * GIB)
    set_(fig4, "fast-dllm-prefix", 16384, captured=False, capture_failure="RuntimeError: capture failed")
    folder = _write_folder(tmp_path / "run", rows, tests=(60, 1, 0))
    status = _status(folder)
    failed = {n for n, s in status.items() if s == "FAIL"}
    assert failed == {
        "CUDA tests", "dllm-cache host syncs per decode step @ 1k", "maskkv aten ops per layer per decode step @ 1k",
        "maskkv mean decode step @ 2k", "maskkv / no cache @ 1k", "maskkv-offline / no cache @ 32k",
        "maskkv-offline / fast-dllm-prefix @ 32k", "maskkv-offline eviction added to the first pass @ 8k",
        "maskkv-offline peak over the weights @ 64k", "fast-dllm-prefix ran captured",
    }  # fmt: skip
    assert "MISSING" not in status.values()
    result = gpu_report.evaluate(folder)
    note = {r["name"]: r["note"] for r in result["rows"]}
    assert "capture_failure: RuntimeError: capture failed" in note["fast-dllm-prefix ran captured"]
    assert "aten.nonzero.default x2" in note["dllm-cache host syncs per decode step @ 1k"]
    assert "tests.test_cuda::t0" in note["CUDA tests"]


def test_report_marks_a_step_cut_short_missing_and_an_out_of_memory_row_failed(tmp_path):
    rows = _passing_rows()
    rows["fig4"] = [r for r in rows["fig4"] if r["config"]["prompt_length"] <= 8192]  # killed during 16k
    del rows["long"]  # killed before its first row was saved
    rows["huge"] = [{"config": {"system": "maskkv-offline", "prompt_length": 131072}, "system_label": "MaskKV",
                     "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB"}]  # fmt: skip
    folder = _write_folder(tmp_path / "run", rows, complete=False, rc={"fig4": 124, "long": 124, "huge": 1})
    (folder / "ops" / "results.json").write_text('{"rows": [')  # a truncated file: read as absent
    result = gpu_report.evaluate(folder)
    status = {r["name"]: r["status"] for r in result["rows"]}
    note = {r["name"]: r["note"] for r in result["rows"]}
    assert status["maskkv mean decode step @ 8k"] == "PASS"
    for name in ("maskkv mean decode step @ 16k", "maskkv mean decode step @ 32k", "maskkv / no cache @ 32k",
                 "maskkv-offline eviction added to the first pass @ 16k", "maskkv mean decode step @ 64k",
                 "maskkv / fast-dllm-prefix @ 64k", "maskkv-offline peak over the weights @ 64k"):  # fmt: skip
        assert status[name] == "MISSING", name
    assert "fig4: cut short by its 190 s limit" in note["maskkv mean decode step @ 32k"]
    assert "long: cut short by its 110 s limit" in note["maskkv-offline peak over the weights @ 64k"]
    assert status["maskkv-offline ran @ 128k"] == "FAIL" and "OutOfMemoryError" in note["maskkv-offline ran @ 128k"]
    assert all(status[f"{s} host syncs per decode step @ 1k"] == "MISSING" for s in gpu_report.GPU_SYSTEMS["ops"])
    assert "unreadable" in result["steps"]["ops"]["problem"]
    assert status["maskkv ran captured"] == "PASS"  # the rows that ran did capture
    assert result["steps"]["fig4"] == {**result["steps"]["fig4"], "rows": 20, "configurations": 30,
                                       "complete": False, "rc": 124}  # fmt: skip
    assert gpu_report.main([str(folder)]) == 0  # and the markdown renders


def test_report_reads_an_interrupted_pytest_and_an_empty_folder(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    assert gpu_report.main([str(folder)]) == 0  # nothing at all: every row MISSING, no exception
    assert {r["status"] for r in json.loads((folder / "targets.json").read_text())["rows"]} == {"MISSING"}
    (folder / "tests.txt").write_text(
        "tests/test_cuda.py::test_a[llada] PASSED [  1%]\ntests/test_cuda.py::test_a[dream] FAILED [  2%]\n"
        "tests/test_cuda.py::test_b SKIPPED (needs x) [  3%]\n")  # killed: no summary line, no XML
    tests = gpu_report.read_tests(folder)
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (1, 1, 1)
    assert tests["failing"] == ["tests/test_cuda.py::test_a[dream]"] and "cut short" in tests["source"]
    (folder / "tests.txt").write_text("....F\nFAILED tests/test_cuda.py::test_c - assert 1 == 2\n"
                                      "1 failed, 4 passed, 2 skipped in 3.21s\n")  # fmt: skip
    tests = gpu_report.read_tests(folder)
    assert (tests["passed"], tests["failed"], tests["skipped"], tests["failing"]) == (
        4, 1, 2, ["tests/test_cuda.py::test_c"])
    assert gpu_report.main([str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_configuration_that_raises_becomes_an_error_row_and_the_next_one_runs(monkeypatch):
    """One broken system must not end a step of the one-shot GPU run: any exception is its row's error."""
    from maskkv.bench import runner

    def broken(config, model=None):
        raise TypeError("bad capture key")

    monkeypatch.setattr(runner, "measure", broken)
    row = runner.measure_in_process(runner.BenchConfig(system="maskkv", prompt_length=64))
    assert row["error"] == "TypeError: bad capture key" and row["config"]["system"] == "maskkv"
