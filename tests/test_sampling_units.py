"""Sampling building blocks against hand-computed values, and every validation error of ``generate``."""

from __future__ import annotations

import math

import pytest
import torch

from maskkv.models.config import ModelConfig
from maskkv.sampling import GenerationOutput, generate
from maskkv.sampling.confidence import (
    ARGMAX_CHUNK,
    add_gumbel_noise,
    first_argmax,
    llada_propose,
    sample_tokens,
    top_k_logits,
    top_p_logits,
)
from maskkv.sampling.schedules import (
    dream_num_transfer_tokens,
    dream_timesteps,
    dream_transfer_schedule,
    llada_num_transfer_tokens,
    threshold_transfer_index,
)

NEG_INF = float("-inf")
VOCAB = 16
MASK, EOT, EOS = 15, 14, 13


@pytest.mark.parametrize("width", [ARGMAX_CHUNK * 2, ARGMAX_CHUNK * 5 + 37, 126464, 100])
@pytest.mark.parametrize("kind", ["normal", "ties", "max_in_tail", "all_inf", "nan", "non_contiguous"])
def test_first_argmax_equals_torch_argmax(width: int, kind: str) -> None:
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(2, 3, width, generator=generator)
    if kind == "ties":  # many equal maxima across chunks: the first one must win
        x = torch.randint(0, 3, (2, 3, width), generator=generator).float()
    elif kind == "max_in_tail":
        x[..., -1] = 10.0
        x[0, 0, 5] = 10.0  # an equal maximum earlier in row (0, 0) wins over the tail
    elif kind == "all_inf":
        x[1] = NEG_INF
    elif kind == "nan":
        x[0, 2, width // 2] = float("nan")
    elif kind == "non_contiguous":
        x = torch.randn(2, width, 3, generator=generator).transpose(1, 2)
    assert torch.equal(first_argmax(x), torch.argmax(x, dim=-1))


def test_first_argmax_keeps_float64_and_2d_inputs() -> None:
    x = torch.randn(5, ARGMAX_CHUNK * 3 + 1, dtype=torch.float64)
    x[:, 17] = x.amax() + 1  # the maximum in the first chunk of every row
    assert first_argmax(x).tolist() == [17] * 5


class StubModel:
    """Minimal ``logits_at`` model: position- and canvas-dependent logits, never proposing the mask id."""

    def __init__(self, family: str = "llada") -> None:
        self.config = ModelConfig(
            family=family, vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
            head_dim=8, intermediate_size=8, rope_theta=1e4, norm_eps=1e-6, qkv_bias=False,
            tie_word_embeddings=False, rope_in_fp32=True, logits_shift=family == "dream",
            pad_queries_masked=family == "dream", mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS,
            eot_token_id=EOT,
        )
        self.calls = 0

    def logits_at(self, input_ids, attention_mask, positions):
        self.calls += 1
        batch, length = input_ids.shape
        table = torch.sin(torch.arange(length * VOCAB, dtype=torch.float32).reshape(length, VOCAB) * 0.7) * 4
        canvas = (input_ids.float().mean(dim=1) * 0.01)[:, None, None]
        logits = table.unsqueeze(0) + canvas
        logits[..., MASK] = -30.0
        return logits[:, positions]


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


def test_llada_schedule_hand_values():
    assert llada_num_transfer_tokens(torch.ones(1, 10, dtype=torch.bool), 4).tolist() == [[3, 3, 2, 2]]
    assert llada_num_transfer_tokens(torch.ones(1, 8, dtype=torch.bool), 8).tolist() == [[1] * 8]
    assert llada_num_transfer_tokens(torch.ones(1, 4, dtype=torch.bool), 6).tolist() == [[1, 1, 1, 1, 0, 0]]
    rows = torch.zeros(2, 10, dtype=torch.bool)
    rows[0, :3] = True
    rows[1] = True
    out = llada_num_transfer_tokens(rows, 4)
    assert out.tolist() == [[1, 1, 1, 0], [3, 3, 2, 2]] and out.dtype == torch.int64
    with pytest.raises(ValueError, match="steps"):
        llada_num_transfer_tokens(rows, 0)


@pytest.mark.parametrize("n", [32, 64, 128, 256, 512, 768])
def test_dream_schedule_one_zero_step_then_ones(n):
    assert dream_transfer_schedule(n, n) == [0] + [1] * (n - 2) + [2]


@pytest.mark.parametrize("n", [999, 1024, 1280])
def test_dream_schedule_two_zero_steps(n):
    counts = dream_transfer_schedule(n, n)
    assert counts[:3] == [0, 0, 1] and counts[-1] == 3 and set(counts[2:-1]) == {1} and sum(counts) == n


def test_dream_schedule_998_has_a_zero_step_later():
    counts = dream_transfer_schedule(998, 998)
    assert counts[0] == 0 and 0 in counts[1:-1] and sum(counts) == 998


def test_dream_schedule_half_steps():
    assert dream_transfer_schedule(256, 128) == [1] + [2] * 126 + [3]
    assert dream_transfer_schedule(32, 16) == [1] + [2] * 14 + [3]


def test_dream_timesteps_are_torch_linspace_float32():
    t = dream_timesteps(7, 1e-3)
    assert t.dtype == torch.float32 and torch.equal(t, torch.linspace(1, 1e-3, 8))


def test_dream_count_uses_the_batch_mean_and_truncates():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :5] = True  # mean 4
    t = torch.tensor([1.0, 0.5, 0.0])
    assert dream_num_transfer_tokens(mask, t, 0, 2) == 2  # int(4 * 0.5)
    assert dream_num_transfer_tokens(mask, t, 1, 2) == 4  # last step: int(mean)
    mask[1, 5] = True  # mean 4.5
    assert dream_num_transfer_tokens(mask, t, 1, 2) == 4


def test_threshold_rule_hand_rows():
    inf = NEG_INF
    confidence = torch.tensor(
        [
            [0.95, 0.50, 0.95, 0.99, 0.92],  # position 3 is not eligible
            [0.20, 0.70, 0.10, inf, inf],  # all below: top-1 only
            [0.30, 0.30, 0.10, inf, inf],  # tie at the top, below threshold: exactly one, topk's first
            [0.90, 0.90, 0.50, inf, inf],  # equal to the threshold is kept
            [0.99, 0.99, 0.99, 0.99, 0.99],  # nothing eligible
        ]
    )
    eligible = torch.tensor(
        [
            [True, True, True, False, True],
            [True, True, True, False, False],
            [True, True, True, False, False],
            [True, True, True, False, False],
            [False] * 5,
        ]
    )
    pick = threshold_transfer_index(confidence, eligible, 0.9)
    assert pick[0].nonzero().squeeze(1).tolist() == [0, 2, 4]
    assert pick[1].nonzero().squeeze(1).tolist() == [1]
    first = int(torch.topk(confidence[2], 3).indices[0])
    assert pick[2].nonzero().squeeze(1).tolist() == [first] and first in (0, 1)
    assert pick[3].nonzero().squeeze(1).tolist() == [0, 1]
    assert not pick[4].any()
    # threshold 1 keeps only the top-1 (probabilities below 1)
    assert threshold_transfer_index(confidence[:1], eligible[:1], 1.0)[0].nonzero().squeeze(1).tolist() == [0]


# ----------------------------------------------------------------------------------------------------------------
# Confidence
# ----------------------------------------------------------------------------------------------------------------


def test_gumbel_at_zero_temperature_is_the_same_object_and_uses_no_rng():
    logits = torch.randn(2, 3, 5)
    state = torch.get_rng_state()
    assert add_gumbel_noise(logits, 0.0) is logits
    assert torch.equal(state, torch.get_rng_state())


def test_gumbel_draws_one_full_float64_uniform():
    logits = torch.randn(2, 3, 5)
    torch.manual_seed(0)
    scored = add_gumbel_noise(logits, 0.5)
    torch.manual_seed(0)
    u = torch.rand(2, 3, 5, dtype=torch.float64)
    assert scored.dtype == torch.float64
    assert torch.equal(scored, logits.double().exp() / (-torch.log(u)) ** 0.5)


def _eos_logits() -> torch.Tensor:
    """Three positions proposing EOS, EOT and token 0 (vocab 5: EOS = 3, EOT = 4)."""
    logits = torch.full((1, 3, 5), 0.0)
    logits[0, 0, 3] = 20.0
    logits[0, 1, 4] = 20.0
    logits[0, 2, 0] = 3.0
    logits[0, 2, 3] = 2.0
    logits[0, 2, 4] = 2.5
    return logits


def test_confidence_eos_eot_aliasing_quirk_at_zero_temperature():
    logits = _eos_logits()
    x0, conf = llada_propose(
        logits, 0.0, "low_confidence", eos_token_id=3, eot_token_id=4, confidence_eos_eot_inf=True
    )
    assert x0.tolist() == [[3, 4, 0]]
    assert conf[0, 0] == 0 and conf[0, 1] == 0  # p = 0, not -inf
    expected = math.exp(3.0) / (math.exp(3.0) + 2 * math.exp(0.0))  # EOS and EOT mass both removed
    assert conf[0, 2].item() == pytest.approx(expected, rel=1e-6)
    assert torch.isinf(logits[0, :, 3]).all() and torch.isinf(logits[0, :, 4]).all()  # raw logits edited


def test_confidence_eos_eot_flag_at_positive_temperature_removes_eot_only():
    logits = _eos_logits()
    torch.manual_seed(0)
    x0, conf = llada_propose(
        logits, 1e-3, "low_confidence", eos_token_id=3, eot_token_id=4, confidence_eos_eot_inf=True
    )
    assert x0.tolist() == [[3, 4, 0]]
    assert conf[0, 0] > 0.99 and conf[0, 1] == 0
    expected = math.exp(3.0) / (math.exp(3.0) + math.exp(2.0) + 2 * math.exp(0.0))  # EOT mass removed only
    assert conf[0, 2].item() == pytest.approx(expected, rel=1e-6)
    assert not torch.isinf(logits[0, :, 3]).any()


def test_logits_eos_inf_and_softmax_dtype():
    logits = _eos_logits()
    x0, conf = llada_propose(logits, 0.0, "low_confidence", eos_token_id=3, eot_token_id=4, logits_eos_inf=True,
                             softmax_dtype="float64")
    assert x0[0, 0] != 3 and x0.tolist()[0][1:] == [4, 0]
    assert conf.dtype == torch.float64
    x0, conf = llada_propose(_eos_logits(), 0.0, "random", eos_token_id=3, eot_token_id=4)
    assert conf is None
    with pytest.raises(ValueError, match="eot_token_id"):
        llada_propose(_eos_logits(), 0.0, "low_confidence", eos_token_id=3, eot_token_id=None,
                      confidence_eos_eot_inf=True)
    with pytest.raises(ValueError, match="softmax_dtype"):
        llada_propose(_eos_logits(), 0.0, "low_confidence", eos_token_id=3, eot_token_id=4, softmax_dtype="bf16")


def test_top_p_keeps_the_first_crossing_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    out = top_p_logits(logits, 0.7)  # cumulative 0.5, 0.8 (crosses, kept), 0.95, 1.0
    low = torch.finfo(torch.float32).min
    assert torch.equal(out[0, :2], logits[0, :2]) and (out[0, 2:] == low).all()
    assert torch.equal(top_p_logits(logits, 0.1)[0, 1:], torch.full((3,), low))  # the top token always stays


def test_top_k_keeps_ties_at_the_kth():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    out = top_k_logits(logits, 2)
    low = torch.finfo(torch.float32).min
    assert out.tolist() == [[3.0, low, 2.0, 2.0, low]]
    assert torch.equal(top_k_logits(logits, 99), logits)


def test_sample_tokens_confidences():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]))
    conf, tok = sample_tokens(logits)
    assert tok.tolist() == [0, 2] and conf.tolist() == pytest.approx([0.6, 0.6])
    conf, _ = sample_tokens(logits, margin_confidence=True)
    assert conf.tolist() == pytest.approx([0.3, 0.4])
    conf, _ = sample_tokens(logits, neg_entropy=True)
    p = torch.tensor([0.6, 0.3, 0.1])
    assert conf[0].item() == pytest.approx(float((p * torch.log(p + 1e-10)).sum()), rel=1e-5)
    torch.manual_seed(0)
    conf, tok = sample_tokens(logits, temperature=1.0)
    torch.manual_seed(0)
    probs = torch.softmax(logits, dim=-1)
    expected = torch.distributions.Categorical(probs=probs).sample()
    assert torch.equal(tok, expected) and torch.equal(conf, probs.gather(-1, tok[:, None]).squeeze(-1))


def test_sample_tokens_falls_back_to_argmax_on_nan():
    logits = torch.tensor([[float("nan"), 0.0, 1.0]])
    conf, tok = sample_tokens(logits, temperature=1.0)  # Categorical rejects NaN probabilities
    assert tok.shape == (1,) and conf.shape == (1,)


# ----------------------------------------------------------------------------------------------------------------
# generate: outputs and validation
# ----------------------------------------------------------------------------------------------------------------


def test_generate_accepts_1d_prompts_and_reports():
    model = StubModel()
    out = generate(model, torch.tensor([1, 2, 3]), gen_length=4, steps=4)
    assert isinstance(out, GenerationOutput)
    assert out.sequences.shape == (1, 7) and out.sequences[0, :3].tolist() == [1, 2, 3]
    assert not (out.sequences == MASK).any()
    assert out.nfe == out.steps == model.calls == 4 and out.seconds >= 0


def test_generate_cfg_without_attention_mask_works():
    out = generate(StubModel(), torch.tensor([[1, 2, 3]]), gen_length=4, steps=2, cfg_scale=1.0)
    assert out.nfe == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gen_length=0, steps=4), "gen_length must be >= 1"),
        (dict(gen_length=4, steps=0), "steps must be >= 1"),
        (dict(gen_length=6, steps=6, block_length=4), "not divisible by block_length=4"),
        (dict(gen_length=4, steps=4, block_length=0), "block_length=0"),
        (dict(gen_length=8, steps=3, block_length=4), "steps=3 is not divisible by the number of blocks 2"),
        (dict(gen_length=4, steps=4, cfg_scale=-1.0), "cfg_scale must be >= 0"),
        (dict(gen_length=4, steps=4, temperature=-0.1), "temperature must be >= 0"),
        (dict(gen_length=4, steps=4, threshold=0.0), r"threshold must be in \(0, 1\]"),
        (dict(gen_length=4, steps=4, threshold=1.5), r"threshold must be in \(0, 1\]"),
        (dict(gen_length=4, steps=4, temperature=float("nan")), "temperature must be >= 0 and finite, got nan"),
        (dict(gen_length=4, steps=4, temperature=float("inf")), "temperature must be >= 0 and finite, got inf"),
        (dict(gen_length=4, steps=4, temperature="0.5"), "temperature must be >= 0 and finite, got '0.5'"),
        (dict(gen_length=4, steps=4, cfg_scale=float("nan")), "cfg_scale must be >= 0 and finite, got nan"),
        (dict(gen_length=4, steps=4, cfg_scale=float("inf")), "cfg_scale must be >= 0 and finite"),
        (dict(gen_length=4, steps=4, threshold=float("nan")), r"threshold must be in \(0, 1\], got nan"),
        (dict(gen_length=4, steps=4, eps=float("nan")), r"eps must be in \(0, 1\), got nan"),
        (dict(gen_length=4, steps=4, top_k=0), "top_k apply to Dream"),
        (dict(gen_length=4, steps=4, softmax_dtype="bf16"), "softmax_dtype='bf16'"),
        (dict(gen_length=4, steps=4, remasking="entropy"), "remasking='entropy' is not valid for a LLaDA"),
        (dict(gen_length=4, steps=4, top_p=0.9), "top_p apply to Dream"),
        (dict(gen_length=4, steps=4, alg_temp=0.1), "alg_temp apply to Dream"),
    ],
)
def test_generate_llada_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(StubModel("llada"), torch.tensor([[1, 2, 3]]), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(remasking="random"), "remasking='random' is not valid for a Dream"),
        (dict(cfg_scale=1.0), "cfg_scale apply to LLaDA"),
        (dict(logits_eos_inf=True), "logits_eos_inf apply to LLaDA"),
        (dict(softmax_dtype="float64"), "softmax_dtype='float64' apply to LLaDA"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(top_k=-1), "top_k must be an integer >= 0, got -1; None is the reference's 50, 0 switches it off"),
        (dict(top_k=2.5), "top_k must be an integer >= 0, got 2.5"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\], got nan"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(alg_temp=-1.0), "alg_temp must be >= 0"),
        (dict(alg_temp=float("nan")), "alg_temp must be >= 0 and finite, got nan"),
        (dict(alg_temp=float("inf")), "alg_temp must be >= 0 and finite, got inf"),
        (dict(temperature=float("inf")), "temperature must be >= 0 and finite, got inf"),
        (dict(eps=0.0), "eps must be in"),
        (dict(eps=float("inf")), "eps must be in"),
        (dict(remasking="entropy", threshold=0.9), "threshold needs a probability-like confidence"),
        (dict(remasking="origin", threshold=0.9), "threshold needs a probability-like confidence"),
        (dict(threshold=0.9, alg_temp=0.5), "alg_temp=0.5 samples the commit order"),
    ],
)
def test_generate_dream_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(StubModel("dream"), torch.tensor([[1, 2, 3]]), gen_length=4, steps=4, **kwargs)


def test_generate_prompt_validation():
    model = StubModel()
    with pytest.raises(ValueError, match="at least one prompt token"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), gen_length=4, steps=4)
    with pytest.raises(ValueError, match=r"prompt_ids\[1, 2\] is the mask token id 15: infilling"):
        generate(model, torch.tensor([[1, 2, 3], [4, 5, MASK]]), gen_length=4, steps=4)
    with pytest.raises(ValueError, match="must be 2-D"):
        generate(model, torch.ones(1, 2, 3, dtype=torch.long), gen_length=4, steps=4)
    with pytest.raises(ValueError, match="integer token ids"):
        generate(model, torch.ones(1, 3), gen_length=4, steps=4)
    with pytest.raises(ValueError, match="model.config.family='gpt'"):
        bad = StubModel()
        object.__setattr__(bad.config, "family", "gpt")
        generate(bad, torch.tensor([[1, 2]]), gen_length=4, steps=4)


def test_generate_attention_mask_validation():
    model = StubModel()
    ids = torch.tensor([[EOS, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 2\) but prompt_ids has shape \(2, 3\)"):
        generate(model, ids, attention_mask=torch.ones(2, 2), gen_length=4, steps=4)
    with pytest.raises(ValueError, match="only 0"):
        generate(model, ids, attention_mask=torch.tensor([[0, 2, 1], [1, 1, 1]]), gen_length=4, steps=4)
    with pytest.raises(ValueError, match="left padding"):
        generate(model, ids, attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]), gen_length=4, steps=4)
    out = generate(model, ids, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), gen_length=4, steps=4)
    assert out.sequences.shape == (2, 7)
