"""LongBench v1 harness: data, official prompts, middle truncation, dLLM generation, resumable predictions, scores.

Specification: ``shared/spec/longbench.md``. Section references in docstrings point there.

- Data (2.3): ``DIR/<task>.jsonl``, ``DIR/data/<task>.jsonl`` or ``DIR`` = ``data.zip``; ``--hf`` downloads the
  official ``data.zip`` through ``huggingface_hub`` (no ``datasets`` needed). LongBench-E reads ``<task>_e.jsonl``.
- Prompts (3.1) from ``dataset2prompt.json`` next to the data, else the packaged copy
  (:mod:`maskkv.eval.longbench_config`); middle truncation at token level before any chat template (3.2); the
  official chat skip list (3.3); ``gen_length = dataset2maxlen[task]`` with steps = gen length and blocks of 8 (3.4).
- Protocols (5, 5.1): ``official`` (default) and ``lmeval`` (the lm-eval ``longbench_*`` tasks that dLLM-Cache and
  hence MaskKV build on), as presets of explicit, recorded options (:class:`Protocol`).
- Scores (4): :func:`score_task` is the exact official scorer (re-exported from :mod:`maskkv.eval.metrics`).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .common import (
    EvalError,
    GenerationConfig,
    ModelHandle,
    RunContext,
    TaskPlan,
    generate_text,
    mean,
    nan_to_none,
    prepare_run_dir,
    run_tasks,
    sample_seed,
    selected_rows,
    write_csv_atomic,
    write_json_atomic,
)
from .longbench_config import DATASET2MAXLEN, DATASET2PROMPT
from .metrics import (
    CHINESE_TASKS,
    FIRST_LINE_TASKS,
    LONGBENCH_E_TASKS,
    ROUGE_RECURSION_CUTOFF,
    TASK_METRICS,
    score_task,
    score_task_e,
)

__all__ = [
    "CATEGORIES",
    "CHAT_SKIP_TASKS",
    "DATA_URL",
    "ENGLISH_TASKS",
    "PROTOCOLS",
    "Protocol",
    "build_prompt",
    "load_task",
    "run_longbench",
    "score_predictions",
    "score_task",
    "score_task_e",
]

logger = logging.getLogger(__name__)

#: The 16 English tasks of the MaskKV paper's Table 1, in the official order (1).
ENGLISH_TASKS: tuple[str, ...] = tuple(TASK_METRICS)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "single-doc QA": ("narrativeqa", "qasper", "multifieldqa_en"),
    "multi-doc QA": ("hotpotqa", "2wikimqa", "musique"),
    "summarization": ("gov_report", "qmsum", "multi_news"),
    "few-shot": ("trec", "triviaqa", "samsum"),
    "synthetic": ("passage_count", "passage_retrieval_en"),
    "code": ("lcc", "repobench-p"),
}
_CATEGORY_OF = {task: name for name, tasks in CATEGORIES.items() for task in tasks}

#: Tasks fed as raw text, without the chat template (``pred.py`` line 63; 3.3).
CHAT_SKIP_TASKS: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
CODE_TASKS: frozenset[str] = frozenset({"lcc", "repobench-p"})

DATA_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"
HF_REPO = "THUDM/LongBench"
_FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")


# --------------------------------------------------------------------------------------------------------
# protocol


@dataclass(frozen=True)
class Protocol:
    """Every choice that differs between the official scripts and the lm-eval variant (5.1), recorded per run.

    Parameters
    ----------
    name: preset name, part of the run name.
    prompt_source: ``official`` (dataset2prompt.json verbatim) or ``lmeval`` (its edits: code prompts end at
        "Next line of code:", passage_count without the trailing space, one "\\n" between context and input for
        triviaqa and samsum).
    truncation: ``middle`` (official, token level, before the chat template) or ``none``.
    max_length: prompt token limit for middle truncation (BOS counted), resolved to an int or None.
    chat: ``skiplist`` (all tasks except :data:`CHAT_SKIP_TASKS`), ``all`` or ``none``.
    raw_special_tokens: tokenise non-templated prompts with the tokenizer's special tokens (``pred.py`` line 71).
        Templated prompts never get them again (the template writes its own BOS, 3.3).
    first_line: ``official`` (the scorer's ``lstrip("\\n")`` + first line for trec/triviaqa/samsum) or
        ``until-newline`` (lm-eval's ``until: ["\\n"]``: cut at the first newline, so a leading newline empties it).
    strip_prediction: ``none`` or ``strip`` (lm-eval strips before every non-code metric).
    code_line: ``official`` (a blank line can be the scored line) or ``skip-blank`` (lm-eval task version 6).
    max_new_tokens_offset: added to ``dataset2maxlen`` (0 here; kvpress uses 20).
    fuzz_backend / rouge_recursion_cutoff: metric options (4.2.3, 4.2.6).
    longbench_e: read ``<task>_e.jsonl`` and also score the length buckets (4.4).
    """

    name: str = "official"
    prompt_source: str = "official"
    truncation: str = "middle"
    max_length: int | None = None
    chat: str = "skiplist"
    raw_special_tokens: bool = True
    first_line: str = "official"
    strip_prediction: str = "none"
    code_line: str = "official"
    max_new_tokens_offset: int = 0
    fuzz_backend: str = "levenshtein"
    rouge_recursion_cutoff: int | None = ROUGE_RECURSION_CUTOFF
    longbench_e: bool = False

    def __post_init__(self) -> None:
        choices = {
            "prompt_source": ("official", "lmeval"), "truncation": ("middle", "none"),
            "chat": ("skiplist", "all", "none"), "first_line": ("official", "until-newline"),
            "strip_prediction": ("none", "strip"), "code_line": ("official", "skip-blank"),
            "fuzz_backend": ("levenshtein", "difflib"),
        }  # fmt: skip
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise EvalError(f"protocol option {name}={getattr(self, name)!r}: use one of {', '.join(valid)}")
        if self.max_length is not None and self.max_length < 2:
            raise EvalError(f"max prompt length {self.max_length} is too small (need >= 2 tokens)")

    def uses_chat(self, task: str) -> bool:
        base = task.removesuffix("_e")
        return self.chat == "all" or (self.chat == "skiplist" and base not in CHAT_SKIP_TASKS)

    def template(self, task: str, prompts: dict[str, str]) -> str:
        """The prompt template of ``task`` under this protocol's prompt source (3.1, 5)."""
        template = prompts[task]
        if self.prompt_source == "lmeval":
            if task in CODE_TASKS:
                template = template.removesuffix("\n")
            elif task == "passage_count":
                template = template.removesuffix(" ")
            elif task in ("triviaqa", "samsum"):
                template = template.replace("{context}\n\n{input}", "{context}\n{input}")
        return template

    def postprocess(self, task: str, prediction: str) -> str:
        """Protocol-specific edits before the official scorer (which then applies its own first-line rule)."""
        if self.first_line == "until-newline" and task in FIRST_LINE_TASKS:
            prediction = prediction.split("\n")[0]
        if task in CODE_TASKS:
            if self.code_line == "skip-blank":
                prediction = "\n".join(line for line in prediction.split("\n") if line.strip())
        elif self.strip_prediction == "strip":
            prediction = prediction.strip()
        return prediction


PROTOCOLS: dict[str, Protocol] = {
    "official": Protocol(),
    "lmeval": Protocol(name="lmeval", prompt_source="lmeval", truncation="none", chat="all",
                       first_line="until-newline", strip_prediction="strip", code_line="skip-blank"),
}


# --------------------------------------------------------------------------------------------------------
# data


def _missing_data(path: Path, what: str) -> EvalError:
    return EvalError(
        f"{what}: {path}. LongBench data is the official data.zip ({DATA_URL}); unzip it and pass "
        f"--data <folder> (a flat folder of <task>.jsonl files, a folder with data/<task>.jsonl, or the zip "
        f"itself), or pass --hf to download it through huggingface_hub when online"
    )


def check_task(task: str, *, longbench_e: bool = False) -> None:
    """Raise :class:`EvalError` listing the valid tasks for an unknown or unsupported one."""
    valid = LONGBENCH_E_TASKS if longbench_e else ENGLISH_TASKS
    if task in valid:
        return
    if task in CHINESE_TASKS:
        raise EvalError(f"task {task!r} is a Chinese LongBench task; its metrics are not implemented. "
                        f"Valid tasks: {', '.join(valid)}")
    raise EvalError(f"unknown LongBench{'-E' if longbench_e else ''} task {task!r}. Valid tasks: {', '.join(valid)}")


def resolve_data(data: str | Path | None, *, hf: bool) -> Path:
    """The data folder or zip; with ``hf`` the official ``data.zip`` from the hub (2.2)."""
    if hf:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=HF_REPO, filename="data.zip", repo_type="dataset"))
        except Exception as err:  # network, auth, missing package: all end the same way for the user
            raise EvalError(f"could not download {HF_REPO} data.zip through huggingface_hub ({err}); download "
                            f"{DATA_URL} by hand and pass --data") from err
    if data is None:
        raise EvalError(f"no LongBench data given: pass --data DIR (the unpacked {DATA_URL}) or --hf")
    path = Path(data).expanduser()
    if not path.exists():
        raise _missing_data(path, "LongBench data folder does not exist")
    return path


def _read_lines(data: Path, name: str) -> tuple[list[str], str]:
    """Lines of ``<name>.jsonl`` from a flat folder, a ``data/`` folder or a zip; plus where they came from."""
    if data.is_file():
        if not zipfile.is_zipfile(data):
            raise _missing_data(data, "not a folder nor a zip archive")
        with zipfile.ZipFile(data) as archive:
            for member in (f"data/{name}.jsonl", f"{name}.jsonl"):
                if member in archive.namelist():
                    text = archive.read(member).decode("utf-8")
                    return text.splitlines(), f"{data}!{member}"
        raise _missing_data(data, f"data/{name}.jsonl is not in the archive")
    for path in (data / f"{name}.jsonl", data / "data" / f"{name}.jsonl"):
        if path.is_file():
            return path.read_text(encoding="utf-8").splitlines(), str(path)
    raise _missing_data(data / f"{name}.jsonl", f"no {name}.jsonl in the LongBench data folder (nor in data/)")


def load_task(data: Path, task: str, *, longbench_e: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Validated records of a task in file order, each with ``index`` and ``key`` (``_id``) added (2.1, 2.3)."""
    check_task(task, longbench_e=longbench_e)
    name = f"{task}_e" if longbench_e else task
    lines, source = _read_lines(data, name)
    records, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{source}:{number}: not valid JSON ({err})") from err
        missing = [f for f in _FIELDS if f not in record]
        if missing:
            raise EvalError(f"{source}:{number}: missing field(s) {', '.join(missing)}; "
                            "expected the 8 LongBench fields")
        answers = record["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise EvalError(f"{source}:{number}: 'answers' must be a non-empty list of strings")
        index = len(records)
        key = str(record["_id"]) if record["_id"] not in seen else f"{record['_id']}#{index}"
        seen.add(record["_id"])
        records.append({**record, "index": index, "key": key})
    if not records:
        raise EvalError(f"{source} holds no rows")
    return records, source


def load_prompt_config(data: Path | None) -> tuple[dict[str, str], dict[str, int], str]:
    """``dataset2prompt`` / ``dataset2maxlen`` next to the data (or in ``config/``), else the packaged copies."""
    if data is not None and data.is_dir():
        for folder in (data, data / "config", data.parent / "config", data.parent):
            prompt_file, maxlen_file = folder / "dataset2prompt.json", folder / "dataset2maxlen.json"
            if prompt_file.is_file() and maxlen_file.is_file():
                prompts = json.loads(prompt_file.read_text(encoding="utf-8"))
                maxlen = json.loads(maxlen_file.read_text(encoding="utf-8"))
                return prompts, maxlen, str(folder)
    return dict(DATASET2PROMPT), dict(DATASET2MAXLEN), "packaged (maskkv.eval.longbench_config)"


# --------------------------------------------------------------------------------------------------------
# prompts


@dataclass
class BuiltPrompt:
    ids: torch.Tensor  # [1, P]
    truncated: bool
    chat: bool


def build_prompt(tokenizer: Any, template: str, record: dict[str, Any], protocol: Protocol,
                 *, chat: bool) -> BuiltPrompt:
    """Format, middle-truncate at token level, optionally chat-wrap and tokenise one record (3.1-3.3).

    Truncation counts the tokenizer's special tokens, decodes both halves with ``skip_special_tokens=True`` and
    joins them with no separator, exactly like ``pred.py``; the re-tokenised length may differ by a few tokens.
    """
    text = template.format(**{k: v for k, v in record.items() if k in _FIELDS})
    truncated = False
    if protocol.truncation == "middle" and protocol.max_length is not None:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) > protocol.max_length:
            half = protocol.max_length // 2
            text = (tokenizer.decode(ids[:half], skip_special_tokens=True)
                    + tokenizer.decode(ids[len(ids) - half:], skip_special_tokens=True))
            truncated = True
    if chat:
        from ..text import encode_prompt

        ids_t = encode_prompt(tokenizer, text, chat=True)
    else:
        ids_t = tokenizer(text, add_special_tokens=protocol.raw_special_tokens, return_tensors="pt")["input_ids"]
        if ids_t.shape[1] == 0:
            raise EvalError("a prompt is empty after tokenisation")
    return BuiltPrompt(ids=ids_t, truncated=truncated, chat=chat)


def resolve_max_length(value: str | int | None, handle: ModelHandle) -> int | None:
    """``auto`` = the model's ``max_position_embeddings`` minus 500 tokens of room, floored to hundreds (the
    official convention leaves ~500 tokens: 3500 for 4k models, 3.2); ``none`` disables truncation."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, str) and value.lower() == "auto":
        limit = handle.model_config().max_position_embeddings
        return max(2, (limit - 500) // 100 * 100)
    try:
        return int(value)
    except ValueError as err:
        raise EvalError(f"--max-prompt-tokens {value!r}: give an integer, 'auto' or 'none'") from err


# --------------------------------------------------------------------------------------------------------
# scoring


def score_predictions(task: str, rows: Sequence[dict[str, Any]], protocol: Protocol) -> dict[str, Any]:
    """Official task score (and LongBench-E buckets) of prediction rows under ``protocol`` (4.3, 4.4)."""
    base = task.removesuffix("_e")
    preds = [protocol.postprocess(base, str(r["pred"])) for r in rows]
    answers = [r["answers"] for r in rows]
    classes = rows[-1].get("all_classes") if rows else None  # the official scorer reads the last row's
    options = {"fuzz_backend": protocol.fuzz_backend, "rouge_recursion_cutoff": protocol.rouge_recursion_cutoff}
    out: dict[str, Any] = {"score": score_task(base, preds, answers, classes, **options), "samples": len(rows)}
    if protocol.longbench_e:
        out["buckets"] = nan_to_none(score_task_e(base, preds, answers, [int(r["length"]) for r in rows], classes,
                                                  **options))
    return out


def summarise(scores: dict[str, float]) -> dict[str, Any]:
    """Mean of the rounded task scores (2 decimals) and per-category means (4.3 convention)."""
    average = round(mean(list(scores.values())), 2) if scores else None
    categories = {}
    for name, tasks in CATEGORIES.items():
        present = [scores[t] for t in tasks if t in scores]
        if present:
            categories[name] = round(mean(present), 2)
    return {"average": average, "categories": categories}


# --------------------------------------------------------------------------------------------------------
# the run


@dataclass
class LongBenchRun:
    """Resolved inputs of one ``maskkv eval longbench`` run (what the CLI and the sweep build)."""

    handle: ModelHandle
    gen: GenerationConfig
    protocol: Protocol
    tasks: tuple[str, ...]
    data: Path
    limit: int | None = None
    gen_length: int | None = None  # override of dataset2maxlen (+ offset)


def default_run_name(handle: ModelHandle, gen: GenerationConfig, protocol: Protocol) -> str:
    model = Path(handle.path.rstrip("/")).name or "model"
    method = "full" if gen.press is None else f"{gen.press}-{gen.budget}"
    suffix = "-e" if protocol.longbench_e else ""
    return f"{model}_{method}_{gen.cache}_{protocol.name}{suffix}"


def longbench_config(run: LongBenchRun, prompts: dict[str, str], maxlen: dict[str, int],
                     prompt_source: str) -> dict[str, Any]:
    """The hashed configuration: model, decoding, press, cache, protocol and the exact templates used."""
    import hashlib

    templates = {t: run.protocol.template(t, prompts) for t in run.tasks}
    return {
        "benchmark": "longbench-e" if run.protocol.longbench_e else "longbench",
        "model": run.handle.record(),
        "generation": run.gen.record(),
        "protocol": asdict(run.protocol),
        "gen_length_override": run.gen_length,
        "dataset2maxlen": {t: maxlen[t] for t in run.tasks},
        "templates_sha256": {t: hashlib.sha256(s.encode("utf-8")).hexdigest()[:16] for t, s in templates.items()},
        "prompt_config_source": prompt_source,
    }


def run_longbench(run: LongBenchRun, ctx_factory: Any, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Generate the missing predictions of every task, merge, score and write ``result.json``/``result.csv``.

    ``ctx_factory(config) -> RunContext`` decides the run folder and launch (the CLI and the sweep differ).
    Returns the result dictionary on rank 0 and None on other ranks.
    """
    for task in run.tasks:
        check_task(task, longbench_e=run.protocol.longbench_e)
    prompts, maxlen, prompt_source = load_prompt_config(run.data)
    datasets = {task: load_task(run.data, task, longbench_e=run.protocol.longbench_e) for task in run.tasks}
    config = longbench_config(run, prompts, maxlen, prompt_source)
    ctx: RunContext = ctx_factory(config)
    prepare_run_dir(ctx, overwrite=overwrite)
    tokenizer = run.handle.tokenizer

    plans = []
    for task in run.tasks:
        records = datasets[task][0][: run.limit] if run.limit else datasets[task][0]
        template = run.protocol.template(task, prompts)
        requested = run.gen_length or (maxlen[task] + run.protocol.max_new_tokens_offset)
        name = f"{task}_e" if run.protocol.longbench_e else task
        plans.append(TaskPlan(name=name, samples=records,
                              predict=_predictor(run, tokenizer, task, template, requested)))
    rows_by_task = run_tasks(ctx, plans)
    if not ctx.dist.is_main:
        return None

    per_task: dict[str, dict[str, Any]] = {}
    for plan in plans:
        rows = selected_rows(rows_by_task[plan.name] or {}, plan.samples)
        per_task[plan.name] = score_predictions(plan.name, rows, run.protocol)
    scores = {t.removesuffix("_e") if run.protocol.longbench_e else t: v["score"] for t, v in per_task.items()}
    result = {
        "benchmark": config["benchmark"],
        "run": ctx.run_dir.name,
        "config_hash": ctx.hash,
        "config": config,
        "scores": scores,
        "samples": {t: v["samples"] for t, v in per_task.items()},
        **summarise(scores),
        "partial": [],
    }
    if run.protocol.longbench_e:
        result["buckets"] = {t.removesuffix("_e"): v["buckets"] for t, v in per_task.items()}
    write_json_atomic(ctx.run_dir / "result.json", result)
    _write_csv(ctx.run_dir / "result.csv", result)
    return result


def _predictor(run: LongBenchRun, tokenizer: Any, task: str, template: str, gen_length: int) -> Any:
    chat = run.protocol.uses_chat(task)

    def predict(record: dict[str, Any]) -> dict[str, Any]:
        built = build_prompt(tokenizer, template, record, run.protocol, chat=chat)
        out = generate_text(run.handle, run.gen, built.ids, gen_length, sample_seed(run.gen.seed, task,
                                                                                   record["index"]))
        return {
            "pred": out.text, "answers": record["answers"], "all_classes": record["all_classes"],
            "length": record["length"], "_id": record["_id"], "prompt_tokens": int(built.ids.shape[1]),
            "truncated": built.truncated, "chat": built.chat, **out.fields(),
        }

    return predict


def _write_csv(path: Path, result: dict[str, Any]) -> None:
    config = result["config"]
    gen = config["generation"]
    common = [result["run"], config["model"]["path"], gen["press_repr"] or "full", gen["budget"], gen["cache"],
              config["protocol"]["name"], result["config_hash"]]
    header = ["run", "model", "press", "budget", "cache", "protocol", "config_hash", "task", "category", "metric",
              "samples", "score"]
    rows = []
    for task, score in result["scores"].items():
        rows.append([*common, task, _CATEGORY_OF.get(task, ""), TASK_METRICS[task].__name__,
                     result["samples"].get(f"{task}_e", result["samples"].get(task)), score])
    for name, value in result["categories"].items():
        rows.append([*common, f"[{name}]", name, "mean", "", value])
    rows.append([*common, "[average]", "", "mean", "", result["average"]])
    write_csv_atomic(path, header, rows)


def with_protocol_overrides(base: Protocol, **overrides: Any) -> Protocol:
    """``base`` with the non-None overrides applied (the CLI's explicit flags win over the preset)."""
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
