"""Sampler parity: ``maskkv.sampling.generate`` against literal transcriptions of the reference samplers.

The transcriptions below follow ``sampling.md`` 1.4 (LLaDA ``generate.py`` HEAD), 2.4-2.5 (Dream
``_sample`` / ``sample_tokens``) and 3.1 (Fast-dLLM ``generate`` + ``get_transfer_index``) line by line,
on full ``[B, L, V]`` logits, with per-row Python loops where the references have them. They share no
code with the package. A fake model supplies logits that depend on the whole canvas, so every commit
changes later proposals; both sides see bit-identical logits.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.distributions as dists
import torch.nn.functional as F

from maskkv.models.config import ModelConfig
from maskkv.sampling import GenerationOutput, generate
from maskkv.sampling.schedules import dream_transfer_schedule

VOCAB = 48
MASK, EOT, EOS = VOCAB - 1, VOCAB - 2, VOCAB - 3  # EOS doubles as the pad id, as in LLaDA


class FakeModel:
    """Deterministic stand-in for a diffusion LM (the ``logits_at`` interface of ``maskkv.sampling``).

    The prediction for the token at position ``j`` mixes random tables indexed by the tokens at
    ``j - 1`` and ``j + 1``, by ``j``, and by the mean over the real (unpadded) tokens of the canvas.
    ``eos_bias`` (``eot_bias``, default the same) lifts the EOS (EOT) logits so that they are often proposed.
    ``ties``: only the left neighbour and the canvas summary count, so runs of masks get bit-identical
    rows and equal confidences, and the commit order rests on ``torch.topk``'s tie order.
    """

    def __init__(
        self,
        family: str,
        seed: int = 0,
        eos_bias: float = 0.0,
        eot_bias: float | None = None,
        max_len: int = 96,
        ties: bool = False,
    ) -> None:
        self.ties = ties
        self.config = ModelConfig(
            family=family,
            vocab_size=VOCAB,
            hidden_size=8,
            num_layers=1,
            num_heads=1,
            num_kv_heads=1,
            head_dim=8,
            intermediate_size=8,
            rope_theta=10000.0,
            norm_eps=1e-6,
            qkv_bias=False,
            tie_word_embeddings=False,
            rope_in_fp32=True,
            logits_shift=family == "dream",
            pad_queries_masked=family == "dream",
            mask_token_id=MASK,
            eos_token_id=EOS,
            pad_token_id=EOS,
            eot_token_id=EOT,
        )
        g = torch.Generator().manual_seed(seed)
        self.left = torch.randn(VOCAB, VOCAB, generator=g) * 2
        self.right = torch.randn(VOCAB, VOCAB, generator=g) * 2
        self.pos = torch.randn(max_len, VOCAB, generator=g)
        self.glob = torch.randn(VOCAB, VOCAB, generator=g) * 3
        self.bias = torch.zeros(VOCAB)
        self.bias[MASK] = -40.0
        self.bias[EOS] += eos_bias
        self.bias[EOT] += eos_bias if eot_bias is None else eot_bias
        self.calls: list[dict] = []

    def predictions(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``[B, L, V]`` float32: row ``j`` scores the token at position ``j``."""
        batch, length = x.shape
        edge = torch.full((batch, 1), MASK, dtype=torch.long)
        left = torch.cat([edge, x[:, :-1]], dim=1)
        right = torch.cat([x[:, 1:], edge], dim=1)
        valid = torch.ones_like(x) if attention_mask is None else attention_mask
        valid = valid.to(torch.float32).unsqueeze(-1)
        summary = (self.glob[x] * valid).sum(dim=1) / valid.sum(dim=1)  # [B, V]
        if self.ties:
            return self.left[left] + summary.unsqueeze(1) + self.bias
        return self.left[left] + self.right[right] + self.pos[:length] + summary.unsqueeze(1) + self.bias

    # the maskkv interface
    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor):
        self.calls.append(
            {
                "batch": input_ids.shape[0],
                "positions": positions.clone(),
                "masks": (input_ids == MASK).sum(dim=1).clone(),
            }
        )
        return self.predictions(input_ids, attention_mask)[:, positions]

    # what the reference's ``model(x).logits`` returns (Dream: unshifted, row j predicts token j + 1)
    def reference_logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        pred = self.predictions(x, attention_mask)
        if self.config.family == "dream":
            return torch.cat([pred[:, 1:], pred[:, :1]], dim=1)
        return pred


# ----------------------------------------------------------------------------------------------------------------
# Literal transcriptions of the references
# ----------------------------------------------------------------------------------------------------------------


def ref_add_gumbel_noise(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def ref_get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def ref_llada_generate(
    model,
    prompt,
    attention_mask=None,
    steps=128,
    gen_length=128,
    block_length=128,
    temperature=0.0,
    cfg_scale=0.0,
    remasking="low_confidence",
    mask_id=MASK,
    logits_eos_inf=False,
    confidence_eos_eot_inf=False,
    float64_softmax=False,
):
    """LLaDA ``generate.py`` HEAD (``float64_softmax``: the Feb 2025 / Fast-dLLM softmax)."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones((prompt.shape[0], gen_length), dtype=attention_mask.dtype)], dim=-1
        )
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = (
            x[:, prompt.shape[1] + num_block * block_length : prompt.shape[1] + (num_block + 1) * block_length]
            == mask_id
        )
        num_transfer_tokens = ref_get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                attention_mask_ = None
                if attention_mask is not None:
                    attention_mask_ = torch.cat([attention_mask, attention_mask], dim=0)
                logits = model.reference_logits(x_, attention_mask_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model.reference_logits(x, attention_mask)
            if logits_eos_inf:
                logits[:, :, EOS] = -torch.inf
            logits_with_noise = ref_add_gumbel_noise(logits, temperature=temperature)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if confidence_eos_eot_inf:
                logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -torch.inf
            if remasking == "low_confidence":
                p = F.softmax(logits.to(torch.float64) if float64_softmax else logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
            else:
                raise NotImplementedError(remasking)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length :] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=num_transfer_tokens[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


def ref_fast_get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
    logits_with_noise = ref_add_gumbel_noise(logits, temperature=temperature)
    x0 = torch.argmax(logits_with_noise, dim=-1)
    if remasking == "low_confidence":
        p = F.softmax(logits.to(torch.float64), dim=-1)
        x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    elif remasking == "random":
        x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)
    else:
        raise NotImplementedError(remasking)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer_index = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j]))
        transfer_index[j, select_index] = True
        if threshold is not None:
            for k in range(1, int(num_transfer_tokens[j])):
                if confidence[j, select_index[k]] < threshold:
                    transfer_index[j, select_index[k]] = False
    return x0, transfer_index


@torch.no_grad()
def ref_fast_dllm_generate(
    model, prompt, steps, gen_length, block_length, temperature=0.0, remasking="low_confidence", threshold=None
):
    """Fast-dLLM ``llada/generate.py`` ``generate`` (no cache; the per-row loop works for B > 1 too)."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    nfe = 0
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        end = prompt.shape[1] + (num_block + 1) * block_length
        num_transfer_tokens = ref_get_num_transfer_tokens(x[:, start:end] == MASK, steps)
        i = 0
        while True:
            nfe += 1
            mask_index = x == MASK
            logits = model.reference_logits(x, None)
            mask_index[:, end:] = 0
            x0, transfer_index = ref_fast_get_transfer_index(
                logits, temperature, remasking, mask_index, x,
                num_transfer_tokens[:, i] if threshold is None else None, threshold,
            )
            x[transfer_index] = x0[transfer_index]
            i += 1
            if (x[:, start:end] == MASK).sum() == 0:
                break
    return x, nfe


def ref_top_p_logits(logits, top_p=None):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def ref_top_k_logits(logits, top_k=None):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def ref_sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = ref_top_p_logits(logits, top_p)
    if top_k is not None:
        logits = ref_top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            x0 = dists.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def _ref_dream_logits(model, x, attention_mask):
    logits = model.reference_logits(x, attention_mask)
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


@torch.no_grad()
def ref_dream_sample(
    model, input_ids, attention_mask=None, max_new_tokens=16, steps=16, eps=1e-3, alg="origin",
    alg_temp=None, temperature=0.0, top_p=None, top_k=None, block_length=None, threshold=None,
):
    """Dream ``_sample``; ``block_length`` runs the same step rule per block with a per-block linspace
    (the Fast-dLLM block sampler's rule, ``sampling.md`` 3.4); ``threshold`` the 3.1 rule per row."""
    mask_token_id = model.config.mask_token_id
    max_length = input_ids.shape[1] + max_new_tokens
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    if attention_mask is not None:
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=1)
    prompt_len = input_ids.shape[1]
    block_length = max_new_tokens if block_length is None else block_length
    num_blocks = max_new_tokens // block_length
    steps = steps // num_blocks
    timesteps = torch.linspace(1, eps, steps + 1)
    for b in range(num_blocks):
        in_block = torch.zeros(max_length, dtype=torch.bool)
        in_block[prompt_len + b * block_length : prompt_len + (b + 1) * block_length] = True
        if threshold is not None:
            while ((x == mask_token_id) & in_block).any():
                mask_index = (x == mask_token_id) & in_block
                logits = _ref_dream_logits(model, x, attention_mask)
                confidence, x0 = ref_sample_tokens(
                    logits[mask_index], temperature, top_p=top_p, top_k=top_k,
                    margin_confidence=alg == "topk_margin",
                )
                full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
                full_confidence[mask_index] = confidence
                x_ = torch.zeros_like(x) + mask_token_id
                x_[mask_index] = x0.clone()
                transfer = torch.zeros_like(x, dtype=torch.bool)
                for j in range(x.shape[0]):
                    n = int(mask_index[j].sum())
                    if n == 0:
                        continue
                    values, select = torch.topk(full_confidence[j], n)
                    transfer[j, select[0]] = True
                    for k in range(1, n):
                        if values[k] >= threshold:
                            transfer[j, select[k]] = True
                x[transfer] = x_[transfer]
            continue
        for i in range(steps):
            mask_index = (x == mask_token_id) & in_block
            logits = _ref_dream_logits(model, x, attention_mask)
            mask_logits = logits[mask_index]
            t = timesteps[i]
            s = timesteps[i + 1]
            if alg == "origin":
                p_transfer = 1 - s / t if i < steps - 1 else 1
                x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_token_id
                transfer_index_t_s = torch.rand(*x0.shape) < p_transfer
                _, x0[transfer_index_t_s] = ref_sample_tokens(
                    mask_logits[transfer_index_t_s], temperature=temperature, top_p=top_p, top_k=top_k
                )
                x[mask_index] = x0.clone()
            else:
                if alg == "maskgit_plus":
                    confidence, x0 = ref_sample_tokens(mask_logits, temperature=temperature, top_p=top_p, top_k=top_k)
                elif alg == "topk_margin":
                    confidence, x0 = ref_sample_tokens(
                        mask_logits, temperature=temperature, top_p=top_p, top_k=top_k, margin_confidence=True
                    )
                elif alg == "entropy":
                    confidence, x0 = ref_sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k, neg_entropy=True)
                else:
                    raise RuntimeError(alg)
                num_mask_token = mask_index.sum() / mask_index.shape[0]
                number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
                full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
                full_confidence[mask_index] = confidence
                if number_transfer_tokens > 0:
                    if alg_temp is None or alg_temp == 0:
                        _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                    else:
                        full_confidence = full_confidence / alg_temp
                        full_confidence = F.softmax(full_confidence, dim=-1)
                        transfer_index = torch.multinomial(full_confidence, num_samples=number_transfer_tokens)
                    x_ = torch.zeros_like(x, dtype=torch.long) + mask_token_id
                    x_[mask_index] = x0.clone()
                    row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                    x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x


class RefPretrainedConfig:
    """transformers 4.46 ``PretrainedConfig``: besides the model's own fields, every config still carries the
    legacy generation attributes (the ones that reach Dream's sampler are transcribed; ``to_dict`` lists them)."""

    def __init__(self, **kwargs):
        self.max_length = kwargs.pop("max_length", 20)
        self.do_sample = kwargs.pop("do_sample", False)
        self.num_beams = kwargs.pop("num_beams", 1)
        self.temperature = kwargs.pop("temperature", 1.0)
        self.top_k = kwargs.pop("top_k", 50)
        self.top_p = kwargs.pop("top_p", 1.0)
        self.num_return_sequences = kwargs.pop("num_return_sequences", 1)
        self.output_scores = kwargs.pop("output_scores", False)
        self.return_dict_in_generate = kwargs.pop("return_dict_in_generate", False)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self):
        return dict(vars(self))


class RefDreamGenerationConfig:
    """Dream's hub ``DreamGenerationConfig``: the class defaults, ``from_model_config`` (``GenerationConfig``'s:
    the model config's non-None fields as keyword arguments) and ``update``."""

    def __init__(self, **kwargs):
        self.temperature = kwargs.pop("temperature", 0.0)
        self.top_p = kwargs.pop("top_p", None)
        self.top_k = kwargs.pop("top_k", None)
        self.max_length = kwargs.pop("max_length", 20)
        self.max_new_tokens = kwargs.pop("max_new_tokens", None)
        self.eps = kwargs.pop("eps", 1e-3)
        self.steps = kwargs.pop("steps", 512)
        self.alg = kwargs.pop("alg", "origin")
        self.alg_temp = kwargs.pop("alg_temp", None)
        self.num_return_sequences = kwargs.pop("num_return_sequences", 1)
        self.return_dict_in_generate = kwargs.pop("return_dict_in_generate", False)
        self.output_history = kwargs.pop("output_history", False)
        self.mask_token_id = kwargs.pop("mask_token_id", None)
        self.pad_token_id = kwargs.pop("pad_token_id", None)
        self.bos_token_id = kwargs.pop("bos_token_id", None)
        self.eos_token_id = kwargs.pop("eos_token_id", None)
        self.generation_kwargs = kwargs.pop("generation_kwargs", {})
        self._from_model_config = kwargs.pop("_from_model_config", False)
        if not self._from_model_config:
            for key, value in kwargs.items():
                setattr(self, key, value)

    @classmethod
    def from_model_config(cls, model_config):
        config_dict = model_config.to_dict()
        config_dict.pop("_from_model_config", None)
        config_dict = {key: value for key, value in config_dict.items() if value is not None}
        return cls(**config_dict, _from_model_config=True)

    def update(self, **kwargs):
        unused = {}
        for key, value in kwargs.items():
            if hasattr(self, key):
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused


def ref_diffusion_generate(model, inputs, generation_config=None, **kwargs):
    """Dream's ``diffusion_generate``: without a ``generation_config`` one is built from the model config, then
    the keyword arguments override its fields; the sampler is :func:`ref_dream_sample`."""
    if generation_config is None:
        generation_config = RefDreamGenerationConfig.from_model_config(model.reference_config)
    generation_config = copy.deepcopy(generation_config)
    generation_config.update(**kwargs)
    attention_mask = kwargs.pop("attention_mask", None)
    return ref_dream_sample(
        model, inputs, attention_mask=attention_mask, max_new_tokens=generation_config.max_new_tokens,
        steps=generation_config.steps, eps=generation_config.eps, alg=generation_config.alg,
        alg_temp=generation_config.alg_temp, temperature=generation_config.temperature,
        top_p=generation_config.top_p, top_k=generation_config.top_k,
    )


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (and seconds) on a loaded CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prompt(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB - 3, (batch, length), generator=g)


def _left_padded(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of lengths 7, 4 and 6, left-padded with EOS to 7."""
    ids = _prompt(3, 7, seed)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = EOS
    return ids, mask


def _both(run_ours, run_ref, seed: int):
    torch.manual_seed(seed)
    ours = run_ours()
    after_ours = torch.rand(3)
    torch.manual_seed(seed)
    theirs = run_ref()
    after_ref = torch.rand(3)
    return ours, theirs, after_ours, after_ref


def _assert_same(ours: GenerationOutput, theirs: torch.Tensor, after_ours, after_ref) -> None:
    assert isinstance(ours, GenerationOutput)
    assert not (ours.sequences == MASK).any(), "masks left on the canvas"
    assert torch.equal(ours.sequences, theirs)
    assert torch.equal(after_ours, after_ref), "the RNG stream diverged from the reference's"


# ----------------------------------------------------------------------------------------------------------------
# LLaDA
# ----------------------------------------------------------------------------------------------------------------

# (G, Lb, S): one block; s_b = n; rem > 0 (10 over 4); rem > 0 with 2 blocks; s_b > n (zero-commit steps)
LLADA_SHAPES = [(8, None, 8), (12, 4, 6), (10, 10, 4), (12, 6, 8), (8, 4, 12)]


@pytest.mark.parametrize("shape", LLADA_SHAPES, ids=lambda s: f"G{s[0]}-Lb{s[1]}-S{s[2]}")
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_llada_matches_reference(shape, temperature, remasking, cfg_scale):
    gen_length, block_length, steps = shape
    model = FakeModel("llada", seed=1)
    prompt = _prompt(1, 5, seed=2)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=gen_length, steps=steps, block_length=block_length,
            temperature=temperature, remasking=remasking, cfg_scale=cfg_scale,
        ),
        lambda: ref_llada_generate(
            model, prompt, steps=steps, gen_length=gen_length, block_length=block_length or gen_length,
            temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
        ),
        seed=11,
    )
    _assert_same(ours, theirs, a, b)


@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True)], ids=["logits", "conf", "both"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("softmax_dtype", ["logits", "float64"])
def test_llada_eos_flags_match_reference(flags, temperature, softmax_dtype):
    logits_eos_inf, confidence_eos_eot_inf = flags
    model = FakeModel("llada", seed=3, eos_bias=8.0, eot_bias=7.0)  # EOS/EOT are often the argmax
    prompt = _prompt(1, 4, seed=4)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=16, steps=8, block_length=8, temperature=temperature,
            logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf, softmax_dtype=softmax_dtype,
        ),
        lambda: ref_llada_generate(
            model, prompt, steps=8, gen_length=16, block_length=8, temperature=temperature,
            logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf,
            float64_softmax=softmax_dtype == "float64",
        ),
        seed=12,
    )
    _assert_same(ours, theirs, a, b)


@pytest.mark.parametrize("threshold", [None, 0.6])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_llada_tie_order_matches_reference(threshold, cfg_scale):
    """Equal confidences everywhere: the commit order is torch.topk's on full-length rows (``sampling.md`` 1.7)."""
    model = FakeModel("llada", seed=3, ties=True)
    prompt = _prompt(1, 5, seed=2)
    if threshold is None:
        theirs = ref_llada_generate(model, prompt, steps=8, gen_length=24, block_length=24, cfg_scale=cfg_scale)
    else:
        if cfg_scale:
            pytest.skip("Fast-dLLM's generate has no cfg")
        theirs, _ = ref_fast_dllm_generate(model, prompt, 8, 24, 24, threshold=threshold)
    ours = generate(
        model, prompt, gen_length=24, steps=8, cfg_scale=cfg_scale, threshold=threshold,
        softmax_dtype="logits" if threshold is None else "float64",
    )
    assert torch.equal(ours.sequences, theirs)


def test_llada_aliasing_quirk_changes_the_order():
    """At T = 0 the EOS flag lands in the raw logits too: EOS proposals get p = 0 and are committed last."""
    model = FakeModel("llada", seed=3, eos_bias=8.0, eot_bias=7.0)
    prompt = _prompt(1, 4, seed=4)
    plain = generate(model, prompt, gen_length=16, steps=16, block_length=16).sequences
    flagged = generate(model, prompt, gen_length=16, steps=16, block_length=16, confidence_eos_eot_inf=True)
    assert (plain[:, 4:] == EOS).any() and (plain[:, 4:] == EOT).any()
    assert not torch.equal(plain, flagged.sequences)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_llada_left_padded_batch_matches_reference(temperature, cfg_scale):
    model = FakeModel("llada", seed=6)
    ids, mask = _left_padded()
    ours, theirs, a, b = _both(
        lambda: generate(
            model, ids, attention_mask=mask, gen_length=12, steps=6, block_length=4,
            temperature=temperature, cfg_scale=cfg_scale, confidence_eos_eot_inf=True,
        ),
        lambda: ref_llada_generate(
            model, ids, attention_mask=mask, steps=6, gen_length=12, block_length=4,
            temperature=temperature, cfg_scale=cfg_scale, confidence_eos_eot_inf=True,
        ),
        seed=13,
    )
    _assert_same(ours, theirs, a, b)
    rows = {tuple(r.tolist()) for r in ours.sequences[:, 7:]}
    assert len(rows) == 3  # the rows really differ


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("threshold", [0.9, 0.3])
def test_llada_threshold_matches_fast_dllm(temperature, remasking, threshold):
    model = FakeModel("llada", seed=7)
    prompt = _prompt(1, 5, seed=8)
    nfe_ref = []

    def ref():
        x, nfe = ref_fast_dllm_generate(model, prompt, 8, 16, 8, temperature, remasking, threshold)
        nfe_ref.append(nfe)
        return x

    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=16, steps=8, block_length=8, temperature=temperature,
            remasking=remasking, threshold=threshold, softmax_dtype="float64",
        ),
        ref,
        seed=14,
    )
    _assert_same(ours, theirs, a, b)
    assert ours.nfe == nfe_ref[0] == ours.steps


def test_llada_threshold_batch_matches_per_row_rule():
    model = FakeModel("llada", seed=7)
    prompt = _prompt(2, 5, seed=9)
    ours = generate(model, prompt, gen_length=16, steps=2, block_length=8, threshold=0.5, softmax_dtype="float64")
    theirs, nfe = ref_fast_dllm_generate(model, prompt, 2, 16, 8, 0.0, "low_confidence", 0.5)
    assert torch.equal(ours.sequences, theirs)
    assert ours.nfe == nfe


def test_llada_schedule_without_threshold_equals_fast_dllm_tokens():
    """Fast-dLLM without a threshold: LLaDA's float64 tokens, fewer calls when s_b > n (``sampling.md`` 3.1)."""
    model = FakeModel("llada", seed=7)
    prompt = _prompt(1, 5, seed=8)
    ours = generate(model, prompt, gen_length=8, steps=12, block_length=4, softmax_dtype="float64")
    theirs, nfe = ref_fast_dllm_generate(model, prompt, 12, 8, 4)
    assert torch.equal(ours.sequences, theirs)
    assert ours.nfe == nfe == 8 and ours.steps == 12


def test_llada_requests_only_needed_positions_and_counts_nfe():
    model = FakeModel("llada", seed=1)
    prompt = _prompt(1, 5, seed=2)
    out = generate(model, prompt, gen_length=8, steps=4, block_length=4, cfg_scale=1.0)
    assert out.nfe == out.steps == 4 and len(model.calls) == 4
    assert all(c["batch"] == 2 for c in model.calls)  # cfg: one batched call per step
    for i, call in enumerate(model.calls):
        block_start = 5 + (i // 2) * 4
        assert call["positions"].min() >= block_start and call["positions"].max() < block_start + 4
    assert model.calls[0]["positions"].tolist() == [5, 6, 7, 8]
    model.calls.clear()
    out = generate(model, prompt, gen_length=8, steps=4, block_length=4, temperature=0.5)
    assert all(c["positions"].tolist() == list(range(13)) for c in model.calls)  # full rows for the Gumbel draw
    assert out.nfe == 4


def test_llada_determinism_and_seeded_reproducibility():
    model = FakeModel("llada", seed=1)
    prompt = _prompt(2, 5, seed=2)
    kw = dict(gen_length=8, steps=8)
    assert torch.equal(generate(model, prompt, **kw).sequences, generate(model, prompt, **kw).sequences)
    torch.manual_seed(0)
    a = generate(model, prompt, temperature=1.0, **kw).sequences
    torch.manual_seed(0)
    b = generate(model, prompt, temperature=1.0, **kw).sequences
    torch.manual_seed(1)
    c = generate(model, prompt, temperature=1.0, **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------------------------------
# Dream
# ----------------------------------------------------------------------------------------------------------------

DREAM_ALGS = ["origin", "maskgit_plus", "topk_margin", "entropy"]


@pytest.mark.parametrize("alg", DREAM_ALGS)
@pytest.mark.parametrize("alg_temp", [None, 0.1])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("gen_steps", [(16, 16), (16, 8), (12, 5)], ids=lambda s: f"G{s[0]}-S{s[1]}")
def test_dream_matches_reference(alg, alg_temp, temperature, gen_steps):
    gen_length, steps = gen_steps
    model = FakeModel("dream", seed=21)
    prompt = _prompt(1, 5, seed=22)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=gen_length, steps=steps, remasking=alg, alg_temp=alg_temp,
            temperature=temperature,
        ),
        lambda: ref_dream_sample(
            model, prompt, max_new_tokens=gen_length, steps=steps, alg=alg, alg_temp=alg_temp, temperature=temperature
        ),
        seed=15,
    )
    _assert_same(ours, theirs, a, b)


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_dream_origin_finishing_early_skips_calls_but_not_draws(temperature):
    """origin can commit every mask before the last step; the remaining steps need no forward pass."""
    model = FakeModel("dream", seed=21)
    prompt = _prompt(1, 5, seed=22)
    skipped = 0
    for seed in range(6):
        ours, theirs, a, b = _both(
            lambda: generate(model, prompt, gen_length=4, steps=8, remasking="origin", temperature=temperature),
            lambda: ref_dream_sample(model, prompt, max_new_tokens=4, steps=8, alg="origin", temperature=temperature),
            seed=seed,
        )
        _assert_same(ours, theirs, a, b)
        assert ours.steps == 8
        skipped += ours.nfe < ours.steps
    assert skipped > 0


@pytest.mark.parametrize("alg", DREAM_ALGS)
@pytest.mark.parametrize("filters", [(0.9, None), (None, 5), (0.8, 3)], ids=["top_p", "top_k", "both"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_dream_filters_match_reference(alg, filters, temperature):
    top_p, top_k = filters
    model = FakeModel("dream", seed=23)
    prompt = _prompt(1, 4, seed=24)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=12, steps=6, remasking=alg, temperature=temperature, top_p=top_p, top_k=top_k
        ),
        lambda: ref_dream_sample(
            model, prompt, max_new_tokens=12, steps=6, alg=alg, temperature=temperature, top_p=top_p, top_k=top_k
        ),
        seed=16,
    )
    _assert_same(ours, theirs, a, b)


@pytest.mark.parametrize("alg", ["origin", "entropy", "low_confidence"])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("alg_temp", [None, 0.1])
def test_dream_left_padded_batch_matches_reference(alg, temperature, alg_temp):
    """Several rows: greedy through the sync-free steps, T > 0 through the reference's loop (both commits:
    top-k and, with ``alg_temp``, drawn positions)."""
    model = FakeModel("dream", seed=25)
    ids, mask = _left_padded(seed=26)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, ids, attention_mask=mask, gen_length=10, steps=10, remasking=alg, temperature=temperature,
            top_p=0.95, alg_temp=alg_temp,
        ),
        lambda: ref_dream_sample(
            model, ids, attention_mask=mask, max_new_tokens=10, steps=10,
            alg="maskgit_plus" if alg == "low_confidence" else alg, temperature=temperature, top_p=0.95,
            alg_temp=alg_temp,
        ),
        seed=17,
    )
    _assert_same(ours, theirs, a, b)


@pytest.mark.parametrize("alg", DREAM_ALGS)
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_dream_blocks_match_per_block_rule(alg, temperature):
    model = FakeModel("dream", seed=27)
    prompt = _prompt(1, 5, seed=28)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=12, steps=9, block_length=4, remasking=alg, temperature=temperature
        ),
        lambda: ref_dream_sample(
            model, prompt, max_new_tokens=12, steps=9, alg=alg, temperature=temperature, block_length=4
        ),
        seed=18,
    )
    _assert_same(ours, theirs, a, b)
    assert ours.steps == 9


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin"])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("block_length", [None, 6])
@pytest.mark.parametrize("batch", [1, 2])
def test_dream_threshold_matches_per_row_rule(alg, temperature, block_length, batch):
    model = FakeModel("dream", seed=29)
    prompt = _prompt(batch, 5, seed=30)
    ours, theirs, a, b = _both(
        lambda: generate(
            model, prompt, gen_length=12, steps=2, block_length=block_length, remasking=alg,
            temperature=temperature, threshold=0.4,
        ),
        lambda: ref_dream_sample(
            model, prompt, max_new_tokens=12, steps=2, alg=alg, temperature=temperature,
            block_length=block_length, threshold=0.4,
        ),
        seed=19,
    )
    _assert_same(ours, theirs, a, b)
    assert ours.nfe == ours.steps == len(model.calls)


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_dream_tie_order_matches_reference(alg, threshold):
    if threshold is not None and alg == "entropy":
        pytest.skip("threshold needs a probability-like confidence")
    model = FakeModel("dream", seed=3, ties=True)
    prompt = _prompt(1, 5, seed=2)
    ours = generate(model, prompt, gen_length=20, steps=7, remasking=alg, threshold=threshold)
    theirs = ref_dream_sample(model, prompt, max_new_tokens=20, steps=7, alg=alg, threshold=threshold)
    assert torch.equal(ours.sequences, theirs)


@pytest.mark.parametrize("gen_steps", [(32, 32), (32, 16)])
def test_dream_commit_counts_through_generate(gen_steps):
    """G = S = 32 commits [0, 1, ..., 1, 2]; S = G / 2 commits [1, 2, ..., 2, 3] (``sampling.md`` 2.6)."""
    gen_length, steps = gen_steps
    model = FakeModel("dream", seed=31)
    out = generate(model, _prompt(1, 3, seed=32), gen_length=gen_length, steps=steps, remasking="entropy")
    masks = [int(c["masks"][0]) for c in model.calls] + [0]
    commits = [masks[i] - masks[i + 1] for i in range(steps)]
    if steps == gen_length:
        assert commits == [0] + [1] * (steps - 2) + [2]  # the zero-commit first step
        assert masks[0] == masks[1] == gen_length
    else:
        assert commits == [1] + [2] * (steps - 2) + [3]
    assert commits == dream_transfer_schedule(gen_length, steps)
    assert out.nfe == out.steps == steps
    assert all(0 not in c["positions"].tolist() for c in model.calls)
    assert all(len(c["positions"]) == int(c["masks"][0]) for c in model.calls)  # only masked positions


def test_dream_determinism_and_seeded_reproducibility():
    model = FakeModel("dream", seed=33)
    prompt = _prompt(2, 4, seed=34)
    kw = dict(gen_length=10, steps=10, remasking="entropy")
    assert torch.equal(generate(model, prompt, **kw).sequences, generate(model, prompt, **kw).sequences)
    torch.manual_seed(3)
    a = generate(model, prompt, temperature=1.0, top_p=0.95, **kw).sequences
    torch.manual_seed(3)
    b = generate(model, prompt, temperature=1.0, top_p=0.95, **kw).sequences
    torch.manual_seed(4)
    c = generate(model, prompt, temperature=1.0, top_p=0.95, **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------------------------------
# Dream: the default call (DreamGenerationConfig.from_model_config) on tiny checkpoints with a 512-token vocabulary
# ----------------------------------------------------------------------------------------------------------------


class FullForwardDream:
    """A loaded tiny Dream checkpoint seen by both samplers through one full forward per step.

    The reference reads ``model(x).logits`` (row ``j`` predicts token ``j + 1``); ours reads the same tensor
    shifted by one row, so both sides see bit-identical logits. ``reference_config`` is what the hub model's
    ``config`` (a transformers 4.46 ``PretrainedConfig``) holds.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.config = model.config
        self.reference_config = RefPretrainedConfig(
            vocab_size=model.config.vocab_size, mask_token_id=model.config.mask_token_id,
            pad_token_id=model.config.pad_token_id, eos_token_id=model.config.eos_token_id,
            bos_token_id=None, model_type="Dream",
        )

    def reset(self) -> None:
        """Stateless (one full forward per step): nothing to start afresh when ``generate`` re-runs a call."""

    def reference_logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.model(x, attention_mask).logits

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor):
        raw = self.model(input_ids, attention_mask).logits
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)[:, positions]


@pytest.fixture(scope="module", params=[0, 1], ids=lambda s: f"tiny-dream-{s}")
def tiny_dream(request, tmp_path_factory):
    from maskkv.models import load_model
    from maskkv.models.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path_factory.mktemp(f"dream{request.param}"), "dream", seed=request.param)
    model = FullForwardDream(load_model(folder))
    assert model.config.vocab_size == 512  # so that top-50 filtering removes most of the vocabulary
    return model


def _tiny_prompt(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 400, (1, 9), generator=g)  # regular BPE tokens, clear of the special ids


DEFAULT_CASES = [(16, 16, 40), (16, 8, 41), (12, 6, 42)]  # (G, S, prompt seed)


def test_reference_default_generation_config_is_the_legacy_one():
    """The transcription itself: the class defaults lose to the model config's legacy generation attributes."""
    config = RefDreamGenerationConfig.from_model_config(RefPretrainedConfig(mask_token_id=7))
    assert (config.temperature, config.top_p, config.top_k) == (1.0, 1.0, 50)
    assert (config.alg, config.steps, config.eps, config.alg_temp) == ("origin", 512, 1e-3, None)
    class_defaults = RefDreamGenerationConfig()
    assert (class_defaults.temperature, class_defaults.top_p, class_defaults.top_k) == (0.0, None, None)


@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
@pytest.mark.parametrize("case", DEFAULT_CASES, ids=lambda c: f"G{c[0]}-S{c[1]}")
def test_dream_default_call_matches_reference_default_call(tiny_dream, alg, case):
    """``generate(..., remasking=alg)`` with every filter unset = ``diffusion_generate(..., temperature=0.0, alg=alg)``
    without a generation config (top-50 filtered confidences), the call of Dream's README minus the sampling."""
    gen_length, steps, seed = case
    prompt = _tiny_prompt(seed)
    ours = generate(tiny_dream, prompt, gen_length=gen_length, steps=steps, remasking=alg)
    theirs = ref_diffusion_generate(tiny_dream, prompt, max_new_tokens=gen_length, steps=steps, temperature=0.0,
                                    alg=alg)
    assert torch.equal(ours.sequences, theirs)


def test_dream_top_k_zero_switches_the_filter_off_and_the_filter_matters(tiny_dream):
    """``top_k=0`` is the reference with the class defaults (no filter); on a 512-token vocabulary that differs
    from the default call in some case, so the test above would fail without the top-50 default."""
    differs = 0
    for alg in ("entropy", "maskgit_plus", "topk_margin"):
        for gen_length, steps, seed in DEFAULT_CASES:
            prompt = _tiny_prompt(seed)
            off = generate(tiny_dream, prompt, gen_length=gen_length, steps=steps, remasking=alg, top_k=0)
            unfiltered = ref_diffusion_generate(
                tiny_dream, prompt, generation_config=RefDreamGenerationConfig(), max_new_tokens=gen_length,
                steps=steps, temperature=0.0, alg=alg,
            )
            assert torch.equal(off.sequences, unfiltered)
            default = ref_diffusion_generate(tiny_dream, prompt, max_new_tokens=gen_length, steps=steps,
                                             temperature=0.0, alg=alg)
            differs += not torch.equal(off.sequences, default)
    assert differs > 0


@pytest.mark.parametrize("alg", [None, "entropy"])
def test_dream_reference_temperature_matches_the_bare_reference_call(tiny_dream, alg):
    """``temperature=None`` is Dream's effective 1.0: the bare ``diffusion_generate(ids, max_new_tokens, steps)``
    (alg origin, T 1.0, top-50) and ours with every sampling option unset draw the same numbers, same tokens."""
    prompt = _tiny_prompt(43)
    remasking = {"remasking": alg} if alg else {"remasking": "origin"}
    extra = {"alg": alg} if alg else {}
    for seed in range(3):
        ours, theirs, a, b = _both(
            lambda: generate(tiny_dream, prompt, gen_length=12, steps=12, temperature=None, **remasking),
            lambda: ref_diffusion_generate(tiny_dream, prompt, max_new_tokens=12, steps=12, **extra),
            seed=seed,
        )
        assert torch.equal(ours.sequences, theirs)
        assert torch.equal(a, b), "the RNG stream diverged from the reference's"
