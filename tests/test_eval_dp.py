"""Data parallelism on CPU: two ranks shard the samples, rank 0 merges results identical to one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from maskkv.cli import main
from maskkv.eval.common import DistInfo, read_rows, strip_volatile
from maskkv.models.tiny import write_tiny_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("dp-llada"), "llada", seed=4)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _compare(single: Path, parallel: Path, tasks: list[str]) -> None:
    for task in tasks:
        a = [strip_volatile(r) for r in read_rows(single / "pred" / f"{task}.jsonl")]
        b = [strip_volatile(r) for r in read_rows(parallel / "pred" / f"{task}.jsonl")]
        assert a == b and len(a) >= 5
        assert [r["index"] for r in b] == sorted(r["index"] for r in b)
    assert (single / "result.json").read_text() == (parallel / "result.json").read_text()
    assert (single / "result.csv").read_text() == (parallel / "result.csv").read_text()
    assert sorted(p.name for p in (parallel / "pred").iterdir()) == [f"{t}.jsonl" for t in sorted(tasks)]


def test_shard_split_is_disjoint_and_complete():
    items = list(range(11))
    shards = [DistInfo(rank=r, world_size=3).shard(items) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == items and shards[0] == [0, 3, 6, 9]


def test_torchrun_two_ranks_equal_one_process(llada_dir, tmp_path):
    if shutil.which("torchrun") is None and not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    rows = [{"input": "", "context": f"Passage {i}: the river runs to the sea near town number {i}. " * 15,
             "answers": [f"the river {i}"], "length": 90 + i, "dataset": "multi_news", "language": "en",
             "all_classes": None, "_id": f"{i:048x}"} for i in range(7)]
    data = tmp_path / "data"
    data.mkdir()
    (data / "multi_news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "longbench", "--model", str(llada_dir), "--tasks", "multi_news", "--data", str(data),
            "--max-prompt-tokens", "150", "--gen-length", "8", "--press", "snapkv", "--budget", "48",
            "--run-name", "run", "--no-progress"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(port), "-m", "maskkv.cli", *args, "--out", str(tmp_path / "parallel")]
    done = subprocess.run(launch, check=False, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    single = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "single")], catch_exceptions=False)
    assert single.exit_code == 0, single.output
    _compare(tmp_path / "single" / "run", tmp_path / "parallel" / "run", ["multi_news"])


def test_plain_processes_with_rank_env_merge_through_files(llada_dir, tmp_path):
    args = ["eval", "ruler", "--model", str(llada_dir), "--tasks", "niah_single_1", "--lengths", "600",
            "--num-samples", "6", "--gen-length", "8", "--words", "builtin", "--run-name", "run", "--no-progress"]
    command = [sys.executable, "-m", "maskkv.cli", *args, "--out", str(tmp_path / "parallel"), "--merge-timeout",
               "180"]
    ranks = [subprocess.Popen(command, env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    outputs = [p.communicate(timeout=240) for p in ranks]
    for proc, (_, err) in zip(ranks, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert "niah_single_1" in outputs[1][0]  # rank 0 prints the table, rank 1 prints nothing
    single = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "single")], catch_exceptions=False)
    assert single.exit_code == 0, single.output
    _compare(tmp_path / "single" / "run", tmp_path / "parallel" / "run", ["niah_single_1-600"])
