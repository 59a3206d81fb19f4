"""maskkv.lmeval.likelihood equals the LLaDA / Dream reference estimators (tests/reference_lm_eval.py)."""

from __future__ import annotations

import pytest
import torch

import maskkv
from maskkv.lmeval.likelihood import dream_loglikelihood, llada_is_greedy, llada_loglikelihood
from maskkv.models.tiny import write_tiny_checkpoint

from reference_lm_eval import dream_reference, llada_greedy_reference, llada_reference


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    torch.set_num_threads(1)
    out = {}
    for family in ("llada", "dream"):
        folder = write_tiny_checkpoint(tmp_path_factory.mktemp(family) / "ckpt", family, init_std=0.5)
        out[family] = maskkv.load_model(str(folder))
    return out


CASES = [  # (prefix length, target length, mc_num, batch size, cfg)
    (7, 5, 8, 4, 0.0),
    (3, 1, 6, 2, 0.0),
    (12, 9, 12, 12, 0.0),
    (5, 4, 4, 2, 1.5),
]


@pytest.mark.parametrize("prefix_len,target_len,mc_num,batch,cfg", CASES)
def test_llada_estimate_equals_reference(tiny_models, prefix_len, target_len, mc_num, batch, cfg):
    model = tiny_models["llada"]
    gen = torch.Generator().manual_seed(prefix_len * 100 + target_len)
    ids = torch.randint(0, 200, (prefix_len + target_len,), generator=gen)
    prefix, target = ids[:prefix_len], ids[prefix_len:]
    torch.manual_seed(1234)
    ours = llada_loglikelihood(model, prefix, target, mc_num=mc_num, batch_size=batch, cfg_scale=cfg)
    after_ours = torch.rand(3)
    torch.manual_seed(1234)
    ref = llada_reference(model, prefix, target, mc_num=mc_num, batch_size=batch,
                          mask_id=model.config.mask_token_id, cfg=cfg)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert torch.equal(after_ours, torch.rand(3)), "the RNG stream must advance exactly as the reference's"
    # a different seed gives a different estimate: the draws matter
    torch.manual_seed(99)
    other = llada_loglikelihood(model, prefix, target, mc_num=mc_num, batch_size=batch, cfg_scale=cfg)
    assert other != ours or target_len == 1


@pytest.mark.parametrize("prefix_len,target_len,mc_num,batch", [(7, 5, 8, 4), (4, 2, 3, 4), (10, 8, 16, 8)])
def test_dream_estimate_equals_reference(tiny_models, prefix_len, target_len, mc_num, batch):
    model = tiny_models["dream"]
    gen = torch.Generator().manual_seed(prefix_len * 100 + target_len)
    ids = torch.randint(0, 200, (prefix_len + target_len,), generator=gen)
    prefix, target = ids[:prefix_len], ids[prefix_len:]
    torch.manual_seed(4321)
    ours = dream_loglikelihood(model, prefix, target, mc_num=mc_num, batch_size=batch)
    after_ours = torch.rand(3)
    torch.manual_seed(4321)
    ref = dream_reference(model, prefix, target, mc_num=mc_num, batch_size=batch, mask_id=model.config.mask_token_id)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-5)
    assert torch.equal(after_ours, torch.rand(3))
    torch.manual_seed(5)
    assert dream_loglikelihood(model, prefix, target, mc_num=mc_num, batch_size=batch) != ours


def test_estimate_ranks_the_likelier_continuation(tiny_models):
    """A sanity check with meaning: the model's own argmax continuation scores above a random one."""
    model = tiny_models["llada"]
    prefix = torch.arange(10, 20)
    canvas = torch.cat([prefix, torch.full((1,), model.config.mask_token_id)]).unsqueeze(0)
    best = model(canvas).logits[0, -1].argmax().reshape(1)
    worst = model(canvas).logits[0, -1].argmin().reshape(1)
    torch.manual_seed(0)
    assert llada_loglikelihood(model, prefix, best, mc_num=4, batch_size=4) > llada_loglikelihood(
        model, prefix, worst, mc_num=4, batch_size=4)


def test_bad_arguments_are_named(tiny_models):
    model = tiny_models["llada"]
    with pytest.raises(ValueError, match="multiple of the Monte Carlo batch size"):
        llada_loglikelihood(model, torch.arange(3), torch.arange(2), mc_num=6, batch_size=4)
    with pytest.raises(ValueError, match="continuation is empty"):
        dream_loglikelihood(tiny_models["dream"], torch.arange(3), torch.arange(0), mc_num=4, batch_size=4)


@pytest.mark.parametrize("prefix_len,target_len,cfg", [(7, 5, 0.0), (3, 1, 0.0), (12, 9, 0.0), (5, 4, 1.5)])
def test_llada_greedy_check_equals_reference(tiny_models, prefix_len, target_len, cfg):
    """``is_greedy`` as LLaDA's ``suffix_greedy_prediction``: False for a random target, True for the span the
    reference decodes, and False again when one token of that span is changed."""
    model = tiny_models["llada"]
    mask_id = model.config.mask_token_id
    gen = torch.Generator().manual_seed(prefix_len * 10 + target_len)
    ids = torch.randint(0, 200, (prefix_len + target_len,), generator=gen)
    prefix, target = ids[:prefix_len], ids[prefix_len:]
    want, decoded = llada_greedy_reference(model, prefix, target, mask_id=mask_id, cfg=cfg)
    assert llada_is_greedy(model, prefix, target, cfg_scale=cfg) is want
    assert llada_greedy_reference(model, prefix, decoded, mask_id=mask_id, cfg=cfg)[0] is True
    assert llada_is_greedy(model, prefix, decoded, cfg_scale=cfg) is True
    changed = decoded.clone()
    changed[-1] = (changed[-1] + 1) % 200
    assert llada_is_greedy(model, prefix, changed, cfg_scale=cfg) is False
