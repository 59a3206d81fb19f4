"""Machinery shared by every benchmark: configuration hashing, resumable prediction files, data parallelism.

Behaviour follows ``shared/spec/longbench.md`` section 6 (output layout, incremental writing, resume) and
``niah_ruler.md`` 1.6, which reuses it:

- one JSON object per sample is appended to ``pred/<task>.jsonl`` as soon as the sample is finished, then
  flushed and fsync'ed, so a kill loses at most the sample in flight;
- a rerun reads the finished keys, repairs a truncated last line (a crash mid-write) and never generates a
  finished sample again; rows produced under another configuration hash are refused, never mixed;
- under ``torchrun``/``accelerate launch`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) each
  rank takes the rows ``rank::world_size`` of the selected samples, writes its own
  ``pred/<task>.rank<r>-of-<n>.jsonl``, and rank 0 merges the shard files (after a gloo barrier when a process
  group exists, otherwise by waiting until the files hold every expected key) into the same
  ``pred/<task>.jsonl`` a single process writes: rows sorted by dataset index.

Everything that changes a prediction is part of the hashed configuration; what cannot change it (device, world
size, progress bars, ``--limit``) is not.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..validation import check_number

logger = logging.getLogger(__name__)

#: Row fields that depend on the machine's speed; everything else in a prediction row is deterministic.
VOLATILE_ROW_FIELDS: tuple[str, ...] = ("gen_seconds",)

_SHARD_RE = re.compile(r"^(?P<task>.+)\.rank(?P<rank>\d+)-of-(?P<world>\d+)\.jsonl$")


class EvalError(ValueError):
    """A user-facing problem (missing data, unknown task, conflicting run); the message says how to fix it.

    ``field`` names the setting at fault where there is one (e.g. ``press``), so that a front end can point at
    its own name for it (the server answers 400 naming ``maskkv.press``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------------------
# hashing, versions, atomic files


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON: the text that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: dict[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of ``config`` (longbench.md 5.1)."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that influence generation or scores, plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("maskkv", "torch", "transformers", "tokenizers", "numpy", "rapidfuzz", "wonderwords",
                 "needlehaystack", "matplotlib"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path`` (never a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """CSV counterpart of :func:`write_json_atomic`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row])
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def nan_to_none(obj: Any) -> Any:
    """Replace NaN floats by None recursively (an empty LongBench-E bucket serialises as ``null``)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [nan_to_none(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------------
# prediction files


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a JSONL prediction file, tolerating a truncated (unparsable, unterminated) last line.

    A damaged line anywhere else is an error: the file was edited or two writers collided.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it: possibly cut by a kill
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if last:
                break
            raise EvalError(f"{path}:{number} is not valid JSON ({err}); remove the line or the file") from err
        if last:
            break  # parsable but unterminated: the write was cut before its newline; redo it
        rows.append(row)
    return rows


def repair_tail(path: Path) -> int:
    """Cut ``path`` back to its last complete line (ends with a newline); returns the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as handle:
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        # find the last newline
        pos, chunk = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            handle.seek(start)
            block = handle.read(pos - start)
            found = block.rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            pos = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("%s: removed a truncated last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


class RowWriter:
    """Append-only JSONL writer: one line per finished sample, flushed and fsync'ed (longbench.md 6.2)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_files(pred_dir: Path, task: str) -> list[Path]:
    """Every per-rank shard file of ``task`` in ``pred_dir`` (any world size), sorted."""
    if not pred_dir.is_dir():
        return []
    found = []
    for path in pred_dir.iterdir():
        match = _SHARD_RE.match(path.name)
        if match and match["task"] == task:
            found.append(path)
    return sorted(found)


def collect_rows(pred_dir: Path, task: str, expected_hash: str) -> dict[str, dict[str, Any]]:
    """Finished rows of ``task`` by key from the main file and every shard file (first occurrence wins)."""
    rows: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for path in [pred_dir / f"{task}.jsonl", *shard_files(pred_dir, task)]:
        for row in read_rows(path):
            found = row.get("config_hash")
            if found != expected_hash:
                raise EvalError(
                    f"{path} holds a row made with configuration {found}, but this run's configuration is "
                    f"{expected_hash}; rows of different configurations are never mixed. Use another --run-name "
                    "or --overwrite"
                )
            key = str(row["key"])
            if key in rows:
                duplicates += 1
                continue
            rows[key] = row
    if duplicates:
        logger.warning("%s: %d duplicate rows ignored (the first of each key is kept)", task, duplicates)
    return rows


def write_rows_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write a whole prediction file through a temporary file and a rename (used by merges only)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def consolidate(pred_dir: Path, task: str, expected_hash: str) -> dict[str, dict[str, Any]]:
    """Merge shard files into ``<task>.jsonl`` sorted by index, then delete the shards; returns rows by key.

    Without shard files and with an already sorted main file nothing is rewritten.
    """
    rows = collect_rows(pred_dir, task, expected_hash)
    shards = shard_files(pred_dir, task)
    main = pred_dir / f"{task}.jsonl"
    ordered = sorted(rows.values(), key=lambda r: (r["index"], str(r["key"])))
    on_disk = read_rows(main)
    if shards or [r["key"] for r in on_disk] != [r["key"] for r in ordered] or _has_tail(main):
        write_rows_atomic(main, ordered)
        for path in shards:
            path.unlink()
    return rows


def _has_tail(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def strip_volatile(row: dict[str, Any]) -> dict[str, Any]:
    """A prediction row without its timing fields (what two runs of one configuration must agree on)."""
    return {k: v for k, v in row.items() if k not in VOLATILE_ROW_FIELDS}


# --------------------------------------------------------------------------------------------------------
# data parallelism


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a data-parallel launch (``torchrun`` / ``accelerate launch`` env vars)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistInfo:
        def read(name: str, default: int) -> int:
            value = os.environ.get(name)
            if value in (None, ""):
                return default
            try:
                return int(value)
            except ValueError as err:
                raise EvalError(f"environment variable {name}={value!r} is not an integer") from err

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        local = read("LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world:
            raise EvalError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent: need 0 <= RANK < WORLD_SIZE")
        return cls(rank=rank, world_size=world, local_rank=local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's items: ``items[rank::world_size]`` (the official multi-GPU split)."""
        return list(items[self.rank :: self.world_size])

    def shard_name(self, task: str) -> str:
        return f"{task}.rank{self.rank}-of-{self.world_size}.jsonl"

    def device(self, requested: str) -> str:
        """``cuda`` becomes ``cuda:<LOCAL_RANK>`` in a multi-process launch; anything else is kept."""
        if self.distributed and requested == "cuda":
            return f"cuda:{self.local_rank}"
        return requested


def init_process_group(dist: DistInfo, timeout_s: float) -> bool:
    """Join a gloo process group when launched by torchrun/accelerate (``MASTER_ADDR`` set); True if joined.

    Only used for barriers, so gloo serves CPU and GPU runs alike. Without ``MASTER_ADDR`` (plain processes
    given ``RANK``/``WORLD_SIZE``) the ranks synchronise through the prediction files instead.
    """
    if not dist.distributed or "MASTER_ADDR" not in os.environ or not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="gloo", rank=dist.rank, world_size=dist.world_size,
            timeout=_dt.timedelta(seconds=timeout_s),
        )
    return True


def barrier() -> None:
    """A gloo barrier when a process group exists, else nothing."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wait_for_keys(pred_dir: Path, task: str, expected: set[str], expected_hash: str, timeout_s: float,
                  poll_s: float = 1.0) -> None:
    """Block until the prediction files of ``task`` hold every key in ``expected`` (rank 0, file-based merge)."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = expected - set(collect_rows(pred_dir, task, expected_hash))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise EvalError(
                f"{task}: gave up after {timeout_s:.0f} s waiting for {len(missing)} rows from the other ranks "
                f"(e.g. {sorted(missing)[:3]}); rerun with the same command to resume"
            )
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------------------
# generation

# dLLM-Cache (the paper's setting), a full forward every step, or Fast-dLLM's prefix / dual cache
CACHE_KINDS = ("dllm", "none", "fast-prefix", "fast-dual")


@dataclass(frozen=True)
class GenerationConfig:
    """dLLM decoding and eviction settings shared by all benchmarks (recorded and hashed).

    Defaults are the MaskKV paper's (implementation details / App. A.2, longbench.md 3.4): steps = gen length,
    block length 8, dLLM-Cache with prompt/response intervals 50/5 and transfer ratio 0.25, greedy.
    ``steps=None`` means one step per generated token.
    """

    steps: int | None = None
    block_length: int = 8
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cache: str = "dllm"  # dllm | none
    prompt_interval: int = 50
    response_interval: int = 5
    transfer_ratio: float = 0.25
    press: str | None = None  # None = full cache (no eviction)
    budget: int | None = None
    press_options: dict[str, Any] = field(default_factory=dict)
    eos_cut: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        if self.cache not in CACHE_KINDS:
            raise EvalError(f"cache={self.cache!r}: use one of {', '.join(CACHE_KINDS)}", field="cache")
        if self.press is not None and self.cache.startswith("fast-"):
            raise EvalError(f"--cache {self.cache} (Fast-dLLM) does not evict; use --cache dllm with --press {self.press}",
                            field="cache")
        if self.block_length < 1:
            raise EvalError(f"block_length={self.block_length} must be >= 1", field="block_length")
        if self.steps is not None and self.steps < 1:
            raise EvalError(f"steps={self.steps} must be >= 1", field="steps")
        if self.press is not None:
            from ..presses import PRESSES

            if self.press not in PRESSES:
                raise EvalError(f"unknown press {self.press!r}; choose one of {', '.join(sorted(PRESSES))} or 'full'",
                                field="press")
            if self.budget is None or self.budget < 1:
                raise EvalError(f"--press {self.press} needs a positive --budget, got {self.budget}", field="budget")
            self.make_press()  # field overrides (--press-option) checked before any work starts
        check_number("temperature", self.temperature, low=0.0, hint="0 is greedy")
        self.make_cache()  # its own checks (transfer_ratio, intervals)

    def lengths(self, gen_length: int) -> tuple[int, int, int]:
        """``(gen_length, steps, block_length)`` for a requested length.

        The length is rounded up to a multiple of the block length (the LLaDA sampler needs it; RULER's 30
        becomes 32 with blocks of 8, niah_ruler.md 4.2). Steps scale with the rounded length unless fixed.
        """
        if gen_length < 1:
            raise EvalError(f"gen_length={gen_length} must be >= 1", field="gen_length")
        block = min(self.block_length, gen_length)
        length = -(-gen_length // block) * block
        steps = length if self.steps is None else self.steps
        blocks = length // block
        if steps % blocks:
            raise EvalError(f"steps={steps} is not divisible by the {blocks} blocks of gen_length={length}", field="steps")
        return length, steps, block

    def make_press(self) -> Any:
        if self.press is None:
            return None
        from ..presses import make_press

        return make_press(self.press, int(self.budget), **self.press_options)

    def make_cache(self) -> Any:
        if self.cache == "none":
            return None
        from ..cache import DLLMCache, FastDLLMCache

        if self.cache.startswith("fast-"):
            return FastDLLMCache(self.cache.removeprefix("fast-"))

        return DLLMCache(prompt_interval=self.prompt_interval, response_interval=self.response_interval,
                         transfer_ratio=self.transfer_ratio)

    def method_name(self) -> str:
        """Short label: ``full`` or ``<press>@<budget>``."""
        return "full" if self.press is None else f"{self.press}@{self.budget}"

    def record(self) -> dict[str, Any]:
        """Everything that defines the decoding, press ``repr`` included (reproducible constructor string)."""
        out = asdict(self)
        press = self.make_press()
        out["press_repr"] = None if press is None else repr(press)
        out["cache_repr"] = repr(self.make_cache())
        return out


@dataclass
class ModelHandle:
    """A model path and its tokenizer; the weights load on first use (a finished run never loads them)."""

    path: str
    device: str = "cpu"
    dtype: str | None = None
    rope_scaling_factor: float = 1.0
    _tokenizer: Any = None
    _model: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from ..models.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def model(self) -> Any:
        if self._model is None:
            from ..models.loading import WEIGHT_DTYPES, load_model

            self._model = load_model(self.path, device=self.device,
                                     dtype=WEIGHT_DTYPES[self.dtype] if self.dtype else None,
                                     rope_scaling_factor=self.rope_scaling_factor)
        return self._model

    def model_config(self) -> Any:
        """The checkpoint's :class:`ModelConfig` without loading weights."""
        if self._model is not None:
            return self._model.config
        from ..models.loading import read_config, resolve_checkpoint

        return read_config(resolve_checkpoint(self.path), rope_scaling_factor=self.rope_scaling_factor)

    def record(self) -> dict[str, Any]:
        """The model part of a run's configuration (hashed: a run resumes only under the same record).

        A Dream run also records the sampler filters :func:`maskkv.generate` applies when they are left unset
        (the reference's top-k 50 / top-p 1.0), so that a run begun before those defaults cannot be resumed
        into a mix of unfiltered and filtered predictions. LLaDA's reference has no hidden defaults.
        """
        from ..sampling.generate import REFERENCE_DEFAULTS

        local = Path(self.path).expanduser()
        config = self.model_config()
        record: dict[str, Any] = {
            "path": str(local.resolve()) if local.exists() else self.path,
            "family": config.family,
            "dtype": self.dtype or ("float32" if self.device == "cpu" else "bfloat16"),
            "rope_scaling_factor": self.rope_scaling_factor,
            "max_position_embeddings": config.max_position_embeddings,
        }
        filters = {k: v for k, v in REFERENCE_DEFAULTS[config.family].items() if k in ("top_k", "top_p")}
        if filters:
            record["sampler_filters"] = filters
        return record

    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


@dataclass
class Generated:
    """A decoded answer and its costs; :meth:`fields` are the deterministic-plus-timing row fields."""

    text: str
    nfe: int
    seconds: float
    gen_length: int
    cache_peak_bytes: int | None
    kept_fraction: float | None

    def fields(self) -> dict[str, Any]:
        return {"gen_length": self.gen_length, "nfe": self.nfe, "kept_fraction": self.kept_fraction,
                "cache_peak_bytes": self.cache_peak_bytes, "gen_seconds": round(self.seconds, 4)}


def generate_text(handle: ModelHandle, gen: GenerationConfig, ids: torch.Tensor, gen_length: int,
                  sample_seed: int) -> Generated:
    """One prompt ``[1, P]`` through :func:`maskkv.generate` with ``gen``'s settings; seeded per sample.

    The seed depends on the sample, not on the order in which a process meets it, so sharded and resumed runs
    reproduce a single uninterrupted run.
    """
    from ..sampling.generate import generate
    from ..text import decode_answer

    model = handle.model
    length, steps, block = gen.lengths(gen_length)
    torch.manual_seed(sample_seed)
    out = generate(model, ids.to(model.embed_tokens.weight.device), gen_length=length, steps=steps,
                   block_length=block, temperature=gen.temperature, remasking=gen.remasking,
                   cache=gen.make_cache(), press=gen.make_press())
    # no stripping: LongBench's first-line rule strips only leading newlines (longbench.md 3.4, 4.1)
    text = decode_answer(handle.tokenizer, out.sequences[0, ids.shape[1]:], eos_cut=gen.eos_cut, strip=False)
    peak = kept = None
    if out.cache_bytes is not None:
        peak = int(out.cache_bytes.get("peak", out.cache_bytes.get("total", 0)))
        if out.cache_bytes.get("prompt_pairs"):
            kept = out.cache_bytes.get("kept_prompt_pairs", 0) / out.cache_bytes["prompt_pairs"]
    return Generated(text=text, nfe=out.nfe, seconds=out.seconds, gen_length=length, cache_peak_bytes=peak,
                     kept_fraction=kept)


def sample_seed(base: int, task: str, index: int) -> int:
    """A per-sample seed from the run seed, the task name and the sample index (stable across processes)."""
    digest = hashlib.sha256(f"{base}:{task}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# --------------------------------------------------------------------------------------------------------
# the task loop


@dataclass
class TaskPlan:
    """One task of a run: the selected samples and how to turn one into a prediction row.

    ``samples`` are dicts with at least ``key`` (str, unique) and ``index`` (int, dataset order).
    ``predict(sample) -> row`` generates and returns the row's task-specific fields; the loop adds
    ``key``, ``index``, ``task`` and ``config_hash``.
    """

    name: str
    samples: list[dict[str, Any]]
    predict: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class RunContext:
    """Where a run writes and how it is launched."""

    run_dir: Path
    config: dict[str, Any]
    dist: DistInfo = field(default_factory=DistInfo)
    progress: bool = True
    merge_timeout_s: float = 86400.0

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    @property
    def pred_dir(self) -> Path:
        return self.run_dir / "pred"


def prepare_run_dir(ctx: RunContext, *, overwrite: bool) -> None:
    """Create the run folder, write ``run_config.json`` once and refuse a different configuration (6.3 step 1)."""
    config_path = ctx.run_dir / "run_config.json"
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    if overwrite and ctx.dist.distributed and not grouped:
        raise EvalError("--overwrite in a multi-process run needs torchrun/accelerate (a gloo barrier); "
                        "clear the run in a single process first")
    if overwrite and ctx.dist.is_main and ctx.run_dir.exists():
        for name in ("pred", "run_config.json", "result.json", "result.csv", "result_e.json"):
            target = ctx.run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if overwrite and ctx.dist.distributed:
        barrier()
    if config_path.exists():
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        if stored.get("config_hash") != ctx.hash:
            diff = _diff_keys(stored.get("config", {}), ctx.config)
            raise EvalError(
                f"{ctx.run_dir} holds a run with configuration {stored.get('config_hash')} but this command's "
                f"configuration is {ctx.hash} (differs in: {', '.join(diff) or 'unknown'}). Pass --overwrite to "
                "start again there, or --run-name NAME for a new run folder"
            )
    elif ctx.dist.is_main:
        write_json_atomic(config_path, {
            "config_hash": ctx.hash,
            "config": ctx.config,
            "versions": package_versions(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv,
        })
    ctx.pred_dir.mkdir(parents=True, exist_ok=True)


def _diff_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _diff_keys(a, b, f"{prefix}{key}.")
        elif canonical_json(a) != canonical_json(b):
            keys.append(prefix + key)
    return keys


def _progress(total: int, desc: str, enabled: bool, position: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, position=position, dynamic_ncols=True,
                mininterval=1.0, smoothing=0.1, unit="sample", file=sys.stderr)


def run_tasks(ctx: RunContext, plans: Sequence[TaskPlan]) -> dict[str, dict[str, dict[str, Any]] | None]:
    """Generate every missing sample of every task (this rank's shard), then merge on rank 0.

    Returns ``{task: rows by key}`` on rank 0 (after the merge) and ``{task: None}`` on other ranks.
    """
    dist = ctx.dist
    for plan in plans:
        finished = set(collect_rows(ctx.pred_dir, plan.name, ctx.hash))
        mine = dist.shard(plan.samples)
        todo = [s for s in mine if str(s["key"]) not in finished]
        target = ctx.pred_dir / (dist.shard_name(plan.name) if dist.distributed else f"{plan.name}.jsonl")
        desc = plan.name if not dist.distributed else f"{plan.name} [rank {dist.rank}]"
        if not todo:
            continue
        with RowWriter(target) as writer, _progress(len(mine), desc, ctx.progress, dist.rank) as bar:
            bar.update(len(mine) - len(todo))
            for sample in todo:
                fields = plan.predict(sample)
                row = {**fields, "key": str(sample["key"]), "index": int(sample["index"]), "task": plan.name,
                       "config_hash": ctx.hash}
                writer.write(row)
                bar.update(1)
    barrier()
    results: dict[str, dict[str, dict[str, Any]] | None] = {}
    for plan in plans:
        if not dist.is_main:
            results[plan.name] = None
            continue
        if dist.distributed:
            wait_for_keys(ctx.pred_dir, plan.name, {str(s["key"]) for s in plan.samples}, ctx.hash,
                          ctx.merge_timeout_s)
        results[plan.name] = consolidate(ctx.pred_dir, plan.name, ctx.hash)
    return results


def selected_rows(rows: dict[str, dict[str, Any]], samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the selected samples in dataset order (rows of a larger earlier selection are ignored)."""
    return [rows[str(s["key"])] for s in samples if str(s["key"]) in rows]


@contextlib.contextmanager
def distributed_session(dist: DistInfo, timeout_s: float) -> Iterator[bool]:
    """Join (and leave) the gloo group for the duration of a command."""
    joined = init_process_group(dist, timeout_s)
    try:
        yield joined
    finally:
        if joined:
            destroy_process_group()


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
