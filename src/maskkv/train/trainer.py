"""Training loop of the tiny LLaDA model: the LLaDA SFT objective on generated retrieval tasks.

Objective (LLaDA's SFT guidelines): the prompt stays clean; every answer token (the answer, its
``<|eot_id|>`` and the ``<|endoftext|>`` padding up to :data:`~maskkv.train.data.ANSWER_TOKENS`) is
masked independently with probability ``t ~ U(t_min, 1)``, and the loss is the cross-entropy on
the masked answer tokens weighted by ``1/t``, summed per sample, divided by the sample's answer
length, averaged over the batch. LLaDA draws ``t ~ U(eps, 1)`` with ``eps = 1e-3``; we clamp
``t >= 0.1`` (``t_min``), because at this size the ``1/t`` weight of tiny ``t`` made the loss very
noisy (``tiny_model_notes.md``). The ``recall`` training task adds supervised positions inside the
prompt (its recap values): they are always masked and join the sum with weight 1. The ``lm`` task
(not in the default curriculum; probe P9 of the model card) is LLaDA's pre-training objective on
plain filler: its tokens are masked with probability ``t ~ U(t_min, 0.5)`` and predicted, each row
weighing like one answer; such rows have no answer loss.

Everything is seeded: the samples of step ``s`` come from ``Random(seed, s)`` and the masks from a
torch generator seeded the same way, so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer

from ..models.config import ModelConfig
from ..models.llada import checkpoint_keys, config_from_dict
from ..models.loading import load_model
from ..models.tiny import (
    TinyTokenizerInfo,
    _write_json,
    _write_llada_tokenizer,
    tiny_config_dict,
)
from ..models.transformer import DiffusionTransformer
from .data import (
    ANSWER_TOKENS,
    BARE_KV_FORMATS,
    HEADER,
    KEYS,
    KV_FORMATS,
    TASKS,
    VALUE_RANGE,
    VAR_NAMES,
    EssayFiller,
    SyntheticFiller,
    TaskBuilder,
)
from .tokenizer import build_tokenizer, digit_strings, pretokenize_regex

__all__ = ["Stage", "TrainConfig", "all_task_stages", "build_model", "default_stages", "encode_chat", "export_checkpoint",
           "key_refresh_stages", "long_context_all_task_stages", "long_context_stages", "needle_first_stages", "train"]

CHAT_PREFIX = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n"
CHAT_SUFFIX = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


@dataclass
class Stage:
    """A curriculum stage: prompts of ``min_tokens..max_tokens`` tokens, ``steps`` steps of ``batch`` samples."""

    max_tokens: int
    steps: int
    batch: int
    min_tokens: int | None = None  # default: max_tokens // 2
    tasks: dict[str, float] | None = None  # task weights of this stage (default: TrainConfig.task_weights)
    synthetic: float | None = None  # share of built-in-grammar filler (default: TrainConfig.synthetic_share)
    needles: list[int] | None = None  # [low, high] needle count of ``multikey`` samples (default: 2-6)
    lr: float | None = None  # this stage's peak learning rate (default: TrainConfig.lr); the schedule scales it
    values: list[int] | None = None  # [low, high] of the magic numbers and pair values (default: data.VALUE_RANGE)

    @property
    def low(self) -> int:
        return self.min_tokens if self.min_tokens is not None else self.max_tokens // 2


def needle_first_stages() -> list[Stage]:
    """The curriculum of the first two releases (d_model 64): learn the copy short, drill the key lookup, lengthen.

    Its lookup drill never left chance level (``MODEL_CARD.md``); kept to reproduce those releases
    (``--curriculum needle-first --hidden 64 --mlp 128 --rope-theta 500000``).
    """
    lookup = {"single": 0.2, "multikey": 0.3, "recall": 0.5}
    return [
        # The gateway: copy the one needle's value, over the easy built-in filler.
        Stage(128, 1500, 32, 64, tasks={"single": 1.0}, synthetic=1.0),
        # Dense key-lookup drill: 2-6 needles, almost no filler, recaps with several supervised lookups.
        Stage(160, 2500, 64, 64, tasks=lookup, needles=[2, 6]),
        Stage(512, 2000, 16, 160, tasks={"single": 0.5, "multikey": 0.25, "recall": 0.25}, needles=[2, 6]),
        Stage(1024, 1500, 8, 512, tasks={"single": 0.6, "multikey": 0.4}),
        # Long contexts, so that the single needle holds at 2k tokens.
        Stage(2304, 1500, 8, 1536, tasks={"single": 0.6, "multikey": 0.4}),
    ]


# The long stages' mix of ``all-tasks`` and of its ``long-context-all`` continuation.
ALL_TASK_MIX = {"single": 0.4, "multikey": 0.4, "passkey": 0.1, "multivalue": 0.05, "vt": 0.05}


def default_stages() -> list[Stage]:
    """``recall-first`` (release 3; the base of ``all-tasks``, which releases 4 and 5 use): bare associative
    recall first, then the same lookup in the chat template, then the needles and length (``MODEL_CARD.md``)."""
    def bare(tasks: dict[str, float], steps: int, needles: list[int]) -> Stage:
        return Stage(64, steps, 64, 16, tasks=tasks, needles=needles)

    return [
        # Bare "hunter87 kitten70 ... kitten[70]": the only shape in which the lookup left its plateau from scratch
        # (about step 1800); then the key moves away from its value one token at a time, to the needles' three
        # ("kitten is: 70"), and only then the pair count varies (switching gap and count at once lost the lookup).
        bare({"ar0": 1.0}, 2500, [4, 4]),
        bare({"ar1": 1.0}, 300, [4, 4]),
        bare({"ar2": 1.0}, 300, [4, 4]),
        bare({"ar3": 1.0}, 600, [4, 4]),
        bare({"ar3": 1.0}, 500, [2, 6]),
        # The lookup in the chat template, the gateway (copy into the answer region) and the needles, short prompts.
        Stage(160, 1500, 64, 64, tasks={"kv3": 0.3, "ar3": 0.1, "single": 0.3, "multikey": 0.3}, synthetic=1.0,
              needles=[2, 6]),
        Stage(160, 2000, 64, 64, tasks={"multikey": 0.5, "single": 0.3, "kv3": 0.1, "ar3": 0.1}, needles=[2, 6]),
        # Then length, as in the release.
        Stage(512, 1500, 16, 160, tasks={"single": 0.5, "multikey": 0.5}, needles=[2, 6]),
        Stage(1024, 1500, 8, 512, tasks={"single": 0.5, "multikey": 0.5}),
        Stage(2304, 1500, 8, 1536, tasks={"single": 0.5, "multikey": 0.5}),
    ]


def all_task_stages() -> list[Stage]:
    """``recall-first`` with the pass key, multi-value and variable tracking: 10 % of the first short chat stage's
    samples, 20 % of the second's and of the long stages'. Meant for 2-digit number tokens (``--digit-group 2``):
    with 3-digit ones the model never learned to copy a 3-digit token, on which the pass key and variable
    tracking hinge (``MODEL_CARD.md``)."""
    stages = default_stages()
    stages[5] = Stage(160, 1500, 64, 64, tasks={"kv3": 0.3, "ar3": 0.1, "single": 0.25, "multikey": 0.2, "passkey": 0.1,
                                                "multivalue": 0.025, "vt": 0.025}, synthetic=1.0, needles=[2, 6])
    stages[6] = Stage(160, 2000, 64, 64, tasks={"multikey": 0.45, "single": 0.2, "kv3": 0.1, "ar3": 0.05, "passkey": 0.1,
                                                "multivalue": 0.05, "vt": 0.05}, needles=[2, 6])
    for stage in stages[7:]:
        stage.tasks = dict(ALL_TASK_MIX)
    return stages


def long_context_stages() -> list[Stage]:
    """A continuation (``--init-from``) at the held-out lengths: 1-2.3k-token prompts, half single, half multi-key."""
    tasks = {"single": 0.5, "multikey": 0.5}
    return [Stage(1024, 800, 8, 512, tasks=tasks, lr=3e-4), Stage(2304, 1200, 8, 1536, tasks=tasks, lr=3e-4)]


def long_context_all_task_stages() -> list[Stage]:
    """``long-context`` with the long stages' mix of ``all-tasks`` (the continuation of an ``all-tasks`` run)."""
    stages = long_context_stages()
    for stage in stages:
        stage.tasks = dict(ALL_TASK_MIX)
    return stages


def key_refresh_stages() -> list[Stage]:
    """A continuation (``--init-from``) of release 4 that rebuilds the key match its long stages erased.

    The ninth session's probes (``MODEL_CARD.md``): a short multi-key refresher with ``kv3`` / ``ar3`` rows, then
    each length at batch 16 and a low learning rate. The per-stage peaks are set so that, on this schedule, each
    stage starts near the probes' rates (3e-4, then about 1.5e-4 at 0.5-1k tokens and 1e-4 at 1.5-2.3k).
    The candidate for release 5, not yet run as one command.
    """
    short = {"multikey": 0.6, "single": 0.15, "kv3": 0.1, "ar3": 0.05, "passkey": 0.1}
    long_ = {"multikey": 0.6, "single": 0.3, "passkey": 0.1}
    return [
        Stage(160, 800, 64, 64, tasks=short, needles=[2, 6], lr=3e-4),
        Stage(512, 800, 16, 160, tasks=dict(long_), lr=1.6e-4),
        Stage(1024, 1500, 16, 512, tasks=dict(long_), lr=2e-4),
        Stage(2304, 1000, 16, 1536, tasks=dict(long_), lr=4e-4),
    ]


@dataclass
class TrainConfig:
    """Everything that determines a run (saved beside the checkpoints)."""

    out_dir: str
    seed: int = 0
    num_layers: int = 2
    hidden_size: int = 128  # d_model 64 rarely left the key-lookup plateau (MODEL_CARD.md); 128 did at ~1800 steps
    num_heads: int = 4
    intermediate_size: int = 256
    rope_theta: float = 10000.0  # LLaDA-8B has 500000; 10000 gives more rotary frequencies for short offsets
    qkv_bias: bool = False  # LLaDA's include_qkv_bias: q/k/v biases (a learnable attention-by-offset term under RoPE)
    number_init: bool = False  # shared init direction for digit-group embeddings (see build_model)
    tie_embeddings: bool = True  # LLaDA's weight_tying: copying a context token is far easier to learn tied
    vocab_size: int = 3000  # regular BPE tokens (the embedding adds the specials, rounded up to 64)
    digit_group: int = 3  # most digits per number token (3: LLaMA-3; 2: a 5-digit pass key is 3 two-digit tokens)
    stages: list[Stage] = field(default_factory=default_stages)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    t_min: float = 0.1
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"single": 0.5, "multikey": 0.5}
    )  # for stages without their own ``tasks`` (e.g. from ``--stages``)
    filler: str = "essays"  # essays | synthetic
    synthetic_share: float = 0.3
    checkpoint_every: int = 200
    eval_every: int = 500
    threads: int = 1
    max_minutes: float | None = None  # wall-clock deadline of this invocation (checkpoint + stop)
    init_from: str | None = None  # a finished run folder or an exported model folder: its weights and tokenizer start this run (fresh optimiser)
    bf16: bool = False  # CPU autocast to bfloat16
    stop_at_step: int | None = None  # stop (checkpoint + export) at this step, e.g. to reproduce a cut run

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        raw["stages"] = [Stage(**s) for s in raw["stages"]]
        return cls(**raw)


# ---------------------------------------------------------------------------------------------------------
# tokenizer, model


def tokenizer_corpus(filler) -> list[str]:
    """Text the BPE is trained on: filler sentences plus the task vocabulary (keys, names, templates)."""
    rng = random.Random(0)
    texts = list(getattr(filler, "sentences", [])) or [filler.sentence(rng) for _ in range(20000)]
    synth = SyntheticFiller()
    texts += [synth.sentence(rng) for _ in range(3000)]
    for _ in range(30):
        texts.append(HEADER)
        texts += [f"One of the special magic numbers for {k} is: 123. What are all the special magic numbers for {k}"
                  f" mentioned in the provided text?" for k in KEYS]
        texts += [f"VAR {n} = VAR {n}. Which variables are assigned the value 123? List them in order. {n} {n}"
                  for n in VAR_NAMES]
        texts.append("The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key?")
    return texts


def make_filler(kind: str, split: str):
    if kind == "essays":
        return EssayFiller(split)
    if kind == "synthetic":
        return SyntheticFiller(split)
    raise ValueError(f"filler must be 'essays' or 'synthetic', got {kind!r}")


def llada_config_dict(cfg: TrainConfig, info: TinyTokenizerInfo) -> dict[str, Any]:
    """The published LLaDA ``config.json`` with our shapes and our tokenizer's sizes and ids."""
    raw = tiny_config_dict("llada", num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_heads=cfg.num_heads,
                           intermediate_size=cfg.intermediate_size, max_position_embeddings=4096, qkv_bias=cfg.qkv_bias)
    ids = info.special_ids
    raw.update(weight_tying=cfg.tie_embeddings, vocab_size=info.vocab_size, embedding_size=info.vocab_size, eos_token_id=ids["<|endoftext|>"],
               pad_token_id=ids["<|endoftext|>"], mask_token_id=ids["<|mdm_mask|>"], rope_theta=cfg.rope_theta)
    return raw


def build_model(model_config: ModelConfig, seed: int, number_ids: list[int] | None = None) -> DiffusionTransformer:
    """A freshly initialised model: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers), norm
    weights 1, biases 0.

    ``number_ids`` (the digit-group tokens) get a shared random direction (3 x N(0, 0.02)) added to
    their embeddings, so attention can find "a number" before each number's own embedding is learned
    (a probe: it sped up learning the single needle with a large value class).
    """
    torch.manual_seed(seed)
    model = DiffusionTransformer(model_config)
    out_std = 0.02 / math.sqrt(2 * model_config.num_layers)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            torch.nn.init.normal_(p, 0.0, std)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        else:
            torch.nn.init.ones_(p)
    if number_ids:
        shared = torch.randn(model_config.hidden_size) * 0.02
        with torch.no_grad():
            model.embed_tokens.weight[number_ids] += 3 * shared
    return model


def encode_chat(tokenizer, content: str) -> list[int]:
    """Ids of ``content`` as one user turn in LLaDA's chat template (with the assistant header)."""
    return tokenizer.encode(CHAT_PREFIX + content.strip() + CHAT_SUFFIX, add_special_tokens=False).ids


def encode_chat_targets(tokenizer, content: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """:func:`encode_chat` plus the token index of each character span of ``content`` (one token each)."""
    if not spans:
        return encode_chat(tokenizer, content), []
    if content != content.strip():
        raise ValueError("prompt targets need a content without surrounding whitespace")
    enc = tokenizer.encode(CHAT_PREFIX + content + CHAT_SUFFIX, add_special_tokens=False)
    return enc.ids, _token_positions(enc, spans, len(CHAT_PREFIX))


def _token_positions(enc, spans: list[tuple[int, int]], shift: int) -> list[int]:
    """Token index of each character span (shifted by ``shift`` characters) of an encoding; one token each."""
    where = {span: i for i, span in enumerate(enc.offsets)}
    try:
        return [where[(a + shift, b + shift)] for a, b in spans]
    except KeyError as err:
        raise ValueError(f"a prompt target is not exactly one token: {err}") from None


def encode_bare_targets(tokenizer, content: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Ids of `` " " + content`` with no chat template (the bare ``ar*`` tasks) and the token index of each span."""
    enc = tokenizer.encode(" " + content, add_special_tokens=False)
    return enc.ids, _token_positions(enc, spans, 1)


def answer_ids(tokenizer, info: TinyTokenizerInfo, answer: str, length: int = ANSWER_TOKENS) -> list[int]:
    """The answer region: answer tokens, ``<|eot_id|>``, then ``<|endoftext|>`` up to ``length``.

    The answer is encoded with a leading space when that takes fewer tokens: words follow a space in the prompt,
    so the tokenizer has ``" RCY"`` (one token) but splits a bare ``"RCY"`` (two), and the answer should be the
    tokens the model can copy from the prompt (``vt``). Numbers are pre-tokenised apart from their space, so
    numeric answers keep their bare encoding. Decoding strips the space (``text.decode_answer``).
    """
    ids = tokenizer.encode(answer, add_special_tokens=False).ids
    spaced = tokenizer.encode(" " + answer, add_special_tokens=False).ids
    ids = (spaced if len(spaced) < len(ids) else ids) + [info.special_ids["<|eot_id|>"]]
    if len(ids) > length:
        raise ValueError(f"answer {answer!r} needs {len(ids)} tokens > answer region {length}")
    return ids + [info.special_ids["<|endoftext|>"]] * (length - len(ids))


# ---------------------------------------------------------------------------------------------------------
# batches and loss


LM_MAX_RATIO = 0.5  # largest mask ratio of the ``lm`` task's filler (LLaDA pre-training draws t ~ U(0, 1))


def chat_content_range(tokenizer, prompt_tokens: int) -> tuple[int, int]:
    """Token range ``[first, last)`` of the user content inside an :func:`encode_chat` prompt."""
    first = len(tokenizer.encode(CHAT_PREFIX, add_special_tokens=False).ids)
    last = prompt_tokens - len(tokenizer.encode(CHAT_SUFFIX, add_special_tokens=False).ids)
    return first, max(first + 1, last)


def step_rng(seed: int, step: int) -> random.Random:
    return random.Random(seed * 1_000_003 + step)


def make_batch(builder: TaskBuilder, info: TinyTokenizerInfo, cfg: TrainConfig, stage: Stage, step: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Left-padded ``prompt | answer`` ids, attention mask, answer ids ``[B, A]``, prompt targets, tasks.

    Prompt targets (``[N, 4]``: row, position, token id, kind) are the ``recall`` task's recap values
    (kind 0), the masked filler tokens of ``lm`` samples (kind 1: LLaDA's pre-training objective,
    each token masked with probability ``t ~ U(t_min, LM_MAX_RATIO)``) and the queried value of the bare
    ``ar*`` sequences (kind 2); they are already replaced by the mask token in the returned ids. ``lm`` and
    ``ar*`` rows have no answer (see :func:`diffusion_loss`); an ``ar*`` row's answer region is also masked
    out of attention, so the row is the bare sequence alone.
    """
    rng = step_rng(cfg.seed, step)
    target = rng.randint(stage.low, stage.max_tokens)
    tasks, weights = zip(*(stage.tasks or cfg.task_weights).items())
    mask_id = info.special_ids["<|mdm_mask|>"]
    rows, answers, names, spans = [], [], [], []
    for _ in range(stage.batch):
        task = rng.choices(tasks, weights)[0]
        count = (rng.randint(*stage.needles) if task in ("multikey", "recall", *KV_FORMATS, *BARE_KV_FORMATS)
                 and stage.needles else None)
        sample = builder.sample(task, target, rng, num_needles=count, value_range=tuple(stage.values or VALUE_RANGE))
        ans = answer_ids(builder.tokenizer, info, sample.answer)
        if task in BARE_KV_FORMATS:
            prompt, positions = encode_bare_targets(builder.tokenizer, sample.content, sample.context_targets)
            kinds = [2] * len(positions)
        else:
            prompt, positions = encode_chat_targets(builder.tokenizer, sample.content, sample.context_targets)
            kinds = [0] * len(positions)
        if task == "lm":
            ratio = rng.uniform(cfg.t_min, LM_MAX_RATIO)
            first, last = chat_content_range(builder.tokenizer, len(prompt))
            positions = [i for i in range(first, last) if rng.random() < ratio] or [rng.randrange(first, last)]
            kinds = [1] * len(positions)
        rows.append(prompt + ans)
        answers.append(ans)
        names.append(task)
        spans.append(list(zip(positions, kinds)))
    width = max(len(r) for r in rows)
    pad = info.special_ids["<|endoftext|>"]
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = []
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
        if names[i] in BARE_KV_FORMATS:  # a bare sequence: its (unused) answer region stays out of attention
            mask[i, width - len(answers[i]):] = 0
        for pos, kind in spans[i]:
            targets.append((i, width - len(r) + pos, r[pos], kind))
            ids[i, width - len(r) + pos] = mask_id
    context = torch.tensor(targets, dtype=torch.long).view(-1, 4)
    return ids, mask, torch.tensor(answers), context, names


def diffusion_loss(model: DiffusionTransformer, ids: torch.Tensor, mask: torch.Tensor, answers: torch.Tensor,
                   t_min: float, generator: torch.Generator, context: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """LLaDA SFT loss on the answer region (the last ``A`` columns of ``ids``); returns (loss, stats).

    ``context`` (``[N, 4]``: row, position, token id, kind) adds prompt positions that are already
    masked in ``ids``: the ``recall`` recap (kind 0; cross-entropy with weight 1, as at t = 1) and the
    masked filler of ``lm`` rows (kind 1; each row's mean cross-entropy over its masked tokens, times
    ``A``, so an ``lm`` row weighs like one answer) and the queried values of bare ``ar*`` rows (kind 2;
    weight 1). Rows with kind-1 or kind-2 targets have no answer loss.
    """
    b, a = answers.shape
    t = t_min + (1 - t_min) * torch.rand(b, 1, generator=generator)
    masked = torch.rand(b, a, generator=generator) < t
    none = ~masked.any(1)
    if none.any():  # at least one masked token per sample (else that sample has no loss at all)
        masked[none, torch.randint(0, a, (int(none.sum()),), generator=generator)] = True
    lm = None if context is None or not len(context) else context[:, 3] == 1
    bare = None if context is None or not len(context) else context[:, 3] == 2
    if lm is not None and bool((lm | bare).any()):  # pre-training and bare rows: no answer to learn
        no_answer = torch.zeros(b, dtype=torch.bool)
        no_answer[context[lm | bare, 0]] = True
        masked = masked & ~no_answer[:, None]
    noisy = ids.clone()
    noisy[:, -a:] = torch.where(masked, torch.full_like(answers, model.config.mask_token_id), answers)
    attention = None if bool(mask.all()) else mask
    hidden = model.hidden_states(noisy, attention)
    logits = model.project(hidden[:, -a:]).float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none").view(b, a)
    total = ((ce / t) * masked).sum()
    stats: dict[str, float] = {}
    if context is not None and len(context):
        ctx_logits = model.project(hidden[context[:, 0], context[:, 1]]).float()
        ctx_ce = F.cross_entropy(ctx_logits, context[:, 2], reduction="none")
        if bool(lm.any()):
            per_row = torch.bincount(context[lm, 0], minlength=b).clamp(min=1)
            weight = torch.where(lm, a / per_row[context[:, 0]], torch.ones_like(ctx_ce))
            total = total + (ctx_ce * weight).sum()
        else:
            total = total + ctx_ce.sum()
        with torch.no_grad():
            hit = (ctx_logits.argmax(-1) == context[:, 2]).float()
            recap = context[:, 3] == 0
            if bool(recap.any()):
                stats["ctx_acc"] = hit[recap].mean().item()
            if bool(bare.any()):
                stats["ar_acc"] = hit[bare].mean().item()
            if bool(lm.any()):
                stats["lm_acc"] = hit[lm].mean().item()
    loss = total / (a * b)  # per sample / answer length (A), mean over the batch
    with torch.no_grad():
        hits = (logits.argmax(-1) == answers) & masked
        stats["acc"] = hits.sum().item() / max(masked.sum().item(), 1)
        stats["ce"] = ((ce * masked).sum() / masked.sum().clamp(min=1)).item()
    return loss, stats


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak at the last step.

    The peak is the stage's ``lr`` where set, else ``cfg.lr``; the schedule runs over the whole curriculum.
    """
    peak = stage_at(cfg, step)[1].lr or cfg.lr
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.total_steps - cfg.warmup))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def stage_at(cfg: TrainConfig, step: int) -> tuple[int, Stage]:
    acc = 0
    for i, s in enumerate(cfg.stages):
        acc += s.steps
        if step < acc:
            return i, s
    return len(cfg.stages) - 1, cfg.stages[-1]


@torch.no_grad()
def quick_eval(model: DiffusionTransformer, builder: TaskBuilder, info: TinyTokenizerInfo, tokens: int,
               per_task: int = 32, seed: int = 99) -> dict[str, float]:
    """Whole-answer accuracy with every answer token masked and read in one pass (an early signal).

    Multi-key samples have 4 needles, as in the held-out set (RULER's niah_multikey_1).
    """
    model.eval()
    out = {}
    for task in TASKS:
        rng = random.Random(seed)
        right = 0
        for _ in range(per_task):
            sample = builder.sample(task, tokens, rng, num_needles=4 if task == "multikey" else None)
            ans = torch.tensor([answer_ids(builder.tokenizer, info, sample.answer)])
            ids = torch.tensor([encode_chat(builder.tokenizer, sample.content) + [model.config.mask_token_id]
                                * ans.shape[1]])
            pred = model.project(model.hidden_states(ids)[:, -ans.shape[1]:]).argmax(-1)
            right += int(torch.equal(pred, ans))
        out[task] = right / per_task
    model.train()
    return out


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_checkpoint(model: DiffusionTransformer, info: TinyTokenizerInfo, raw_config: dict[str, Any],
                      folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the model in the published LLaDA layout (config.json, model.safetensors, tokenizer files)."""
    folder.mkdir(parents=True, exist_ok=True)
    ours = model.state_dict()
    tensors = {theirs: ours[name].detach().to(dtype).contiguous()
               for theirs, name in checkpoint_keys(model.config).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_json(folder / "config.json", raw_config)
    _write_llada_tokenizer(folder, info)
    return folder


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log rows past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if row["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def _log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _is_model_folder(path: Path) -> bool:
    """An exported model (``RUN/model``, a ``finalize`` destination such as the shipped ``tiny-llada``)."""
    return all((path / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def _digit_group_of(tokenizer_raw: dict[str, Any]) -> int | None:
    """The ``digit_group`` whose pre-tokeniser regex a tokenizer.json uses (None: not one of the trainer's)."""
    splits = (tokenizer_raw.get("pre_tokenizer") or {}).get("pretokenizers", [])
    patterns = {s.get("pattern", {}).get("Regex") for s in splits if s.get("type") == "Split"}
    return next((g for g in (1, 2, 3) if pretokenize_regex(g) in patterns), None)


def _copy_init_tokenizer(base: Path, out: Path, digit_group: int) -> None:
    """Give the run at ``out`` the tokenizer of ``--init-from base`` (a finished run folder or a model folder)."""
    summary = base / "summary.json"
    if summary.is_file():
        if not json.loads(summary.read_text()).get("finished"):
            raise ValueError(f"--init-from {base}: not a finished run folder (summary.json has no finished: true)")
        base_group = json.loads((base / "train_config.json").read_text()).get("digit_group", 3)
        num_regular = json.loads((base / "tokenizer_meta.json").read_text())["num_regular"]
    elif _is_model_folder(base):
        text = (base / "tokenizer.json").read_text()
        base_group = _digit_group_of(json.loads(text))
        if base_group is None:
            raise ValueError(f"--init-from {base}: its tokenizer.json was not built by maskkv's trainer "
                             "(no digit-group pre-tokeniser); start from a run folder or a maskkv model folder")
        num_regular = Tokenizer.from_str(text).get_vocab_size(with_added_tokens=False)
    else:
        raise ValueError(f"--init-from {base}: neither a finished run folder (summary.json with finished: true) nor "
                         "a model folder (config.json, model.safetensors, tokenizer.json)")
    if base_group != digit_group:
        raise ValueError(f"--init-from {base}: its tokenizer cuts numbers into groups of at most {base_group} digits; "
                         f"pass --digit-group {base_group}")
    shutil.copyfile(base / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_meta.json").write_text(json.dumps({"num_regular": num_regular}) + "\n")


def _init_weights(base: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights a continuation starts from: a run's final ``state.pt``, or an exported model's
    (fp16 storage, widened to fp32)."""
    if (base / "summary.json").is_file():
        return torch.load(base / "state.pt", map_location="cpu", weights_only=True)["model"]
    return load_model(str(base), dtype=torch.float32).state_dict()


def train(cfg: TrainConfig, *, progress: bool = True) -> Path:
    """Train (or resume) the run in ``cfg.out_dir``; returns the exported model folder ``out_dir/model``.

    ``out_dir/state.pt`` holds the model, the optimiser, the step and the logged running means;
    ``out_dir/train_config.json`` the configuration (a resumed run must use the same one);
    ``out_dir/log.jsonl`` one row per log interval (a resumed run first drops the rows written after its
    checkpoint, so its log equals the uninterrupted run's but for wall times). The export is written when
    the last step is done.
    """
    from tqdm import tqdm

    start_time = time.time()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "train_config.json"
    saved = json.loads(json.dumps(cfg.to_json()))  # tuples -> lists, as read back from the file
    if cfg_path.exists():
        previous = json.loads(json.dumps(TrainConfig.from_json(json.loads(cfg_path.read_text())).to_json()))
        for volatile in ("max_minutes", "threads", "stop_at_step"):
            previous.pop(volatile, None)
            saved.pop(volatile, None)
        if previous != saved:
            raise ValueError(f"{out} holds a run with another configuration; use a new --out folder")
    else:
        cfg_path.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")

    filler = make_filler(cfg.filler, "train")
    tok_path = out / "tokenizer.json"
    base = Path(cfg.init_from) if cfg.init_from else None
    if base is not None and not tok_path.exists():
        _copy_init_tokenizer(base, out, cfg.digit_group)
    if tok_path.exists():
        meta = json.loads((out / "tokenizer_meta.json").read_text())
        info = TinyTokenizerInfo("llada", tok_path.read_text(), meta["num_regular"])
    else:
        info = build_tokenizer(tokenizer_corpus(filler), vocab_size=cfg.vocab_size, digit_group=cfg.digit_group)
        tok_path.write_text(info.tokenizer_json)
        (out / "tokenizer_meta.json").write_text(json.dumps({"num_regular": info.num_regular}) + "\n")
    tokenizer = info.backend()
    raw_config = llada_config_dict(cfg, info)
    model_config = config_from_dict(raw_config)
    number_ids = [tokenizer.token_to_id(s) for s in digit_strings(cfg.digit_group)] if cfg.number_init else None
    model = build_model(model_config, cfg.seed, number_ids)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    step, elapsed_before = 0, 0.0
    ema: dict[str, float] = {}  # the logged running means of the loss and accuracies
    state_path = out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        ema = {k: float(v) for k, v in state.get("ema", {}).items()}  # absent in checkpoints before 2026-11-29
        _truncate_log(out / "log.jsonl", step)
    elif base is not None:  # continue from the base's weights: new curriculum, step 0, fresh optimiser
        weights = _init_weights(base)
        try:
            model.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"--init-from {base}: its weights do not fit this run's shapes ({err})") from None
    builder = TaskBuilder(tokenizer, filler, synthetic_share=cfg.synthetic_share)
    total = cfg.total_steps
    deadline = start_time + cfg.max_minutes * 60 if cfg.max_minutes else None

    def save() -> None:
        _atomic_save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step,
                      "elapsed": elapsed_before + time.time() - start_time, "ema": dict(ema)}, state_path)

    bar = tqdm(total=total, initial=step, disable=not progress, dynamic_ncols=True, mininterval=2.0)
    model.train()
    stopped = False
    while step < total and (cfg.stop_at_step is None or step < cfg.stop_at_step):
        index, stage = stage_at(cfg, step)
        builder.synthetic_share = cfg.synthetic_share if stage.synthetic is None else stage.synthetic
        ids, mask, answers, context, _ = make_batch(builder, info, cfg, stage, step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for group in optim.param_groups:
            group["lr"] = lr_at(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, stats = diffusion_loss(model, ids, mask, answers, cfg.t_min, gen, context)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        optim.step()
        step += 1
        for k, v in (("loss", loss.item()), *stats.items()):
            ema[k] = v if k not in ema else 0.98 * ema[k] + 0.02 * v
        bar.update(1)
        bar.set_postfix(stage=index, len=ids.shape[1], loss=f"{ema['loss']:.3f}", acc=f"{ema['acc']:.3f}",
                        refresh=False)
        if step % 25 == 0 or step == total:
            _log(out / "log.jsonl", {"step": step, "stage": index, "tokens": ids.shape[1], "loss": ema["loss"],
                                     "acc": ema["acc"], "ce": ema["ce"],
                                     **{k: ema[k] for k in ("ctx_acc", "lm_acc", "ar_acc") if k in ema}, "gnorm": gnorm, "lr": lr_at(cfg, step - 1),
                                     "elapsed": elapsed_before + time.time() - start_time})
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
            quick = quick_eval(model, builder, info, min(stage.max_tokens, 1024))
            _log(out / "log.jsonl", {"step": step, "quick_eval_tokens": min(stage.max_tokens, 1024), **quick})
            bar.write(f"step {step}: one-pass accuracy at {min(stage.max_tokens, 1024)} tokens "
                      + " ".join(f"{k} {v:.2f}" for k, v in quick.items()))
        if step % cfg.checkpoint_every == 0 or step == total:
            save()
        if cfg.stop_at_step is not None and step >= cfg.stop_at_step and step < total:
            save()
            stopped = True
            bar.write(f"stopped at step {step}/{total} (--stop-at-step)")
            break
        if deadline is not None and time.time() > deadline and step < total:
            save()
            stopped = True
            bar.write(f"deadline reached at step {step}/{total}: checkpoint saved; rerun the same command to resume")
            break
    bar.close()
    folder = out / "model"
    export_checkpoint(model, info, raw_config, folder)
    elapsed = elapsed_before + time.time() - start_time
    (out / "summary.json").write_text(json.dumps({"step": step, "total_steps": total, "finished": not stopped,
                                                  "elapsed_s": elapsed}, indent=2) + "\n")
    return folder
