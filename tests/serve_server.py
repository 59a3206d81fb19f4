"""A live ``maskkv serve`` process on 127.0.0.1 (a free port), for the serve tests.

By default it serves the shipped tiny LLaDA model with its MaskKV profile (as ``tiny``, plus a copy as
``vanishing``); ``Server(tmp, model=folder, name=...)`` serves another checkpoint (e.g. a tiny Dream one written
by :func:`maskkv.models.tiny.write_tiny_checkpoint`), with profiles only if the folder has a
``maskkv_profile.json``.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

import maskkv
from maskkv.demo import shipped_model_path

MODEL = shipped_model_path()
PROFILE = MODEL / "maskkv_profile.json"
NAME = "tiny-llada"
GEN = 8
BLOCK = 8
MAX_PROMPT = 700
MAX_QUEUE = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def documents(lengths: list[int], seed: int = 0) -> list[str]:
    """Needle-in-a-haystack prompts (the shipped model's task) of about ``lengths`` tokens."""
    from maskkv.train.data import SyntheticFiller, TaskBuilder

    builder = TaskBuilder(maskkv.load_tokenizer(MODEL).backend_tokenizer, SyntheticFiller("heldout"))
    rng = random.Random(seed)
    return [builder.sample("single", n, rng).content for n in lengths]


class Server:
    def __init__(self, tmp: Path, model: Path = MODEL, name: str = NAME) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        profile = Path(model) / "maskkv_profile.json"
        profiles: list[str] = []
        if profile.is_file():
            self.vanishing = tmp / "vanishing_profile.json"
            shutil.copy(profile, self.vanishing)
            profiles = ["--profile", f"tiny={profile}", "--profile", f"vanishing={self.vanishing}"]
        self.log = open(tmp / "server.log", "w+")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(Path(maskkv.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maskkv.cli", "serve", "--model", str(model), "--port", str(self.port),
             "--served-model-name", name, "--max-tokens", str(GEN), "--block-length", str(BLOCK),
             "--batch-wait-ms", "20", "--max-batch-size", "8", "--max-queue", str(MAX_QUEUE),
             "--max-prompt-tokens", str(MAX_PROMPT), "--sse-keepalive-s", "0.2", "--log-level", "warning",
             *profiles],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        deadline = time.time() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.logtext()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"server did not become healthy:\n{self.logtext()}")
            time.sleep(0.3)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def logtext(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


