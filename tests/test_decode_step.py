"""The decode step at its floor: no host syncs, few aten ops, fused projections, a lean first pass.

Counted with :mod:`maskkv.bench.opcount` (a ``TorchDispatchMode``) over the steady-state steps of real
``generate`` calls (issue 23): every op dispatched between the end of the first pass and the end of the
sampler's loop, the sampler's own work included. Exactness of the fused and chunked paths is checked
against the plain (unfused, unchunked) computations.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import maskkv.models.transformer as transformer
from maskkv.bench.opcount import OpCounter, count_decode_steps
from maskkv.cache import DLLMCache
from maskkv.cache.fast_dllm import FastDLLMCache
from maskkv.models import load_model
from maskkv.models.rope import RopeTable, apply_rotary, inverse_frequencies, rotary_cos_sin
from maskkv.models.tiny import write_tiny_checkpoint
from maskkv.presses import MaskKVPress, make_press
from maskkv.sampling.generate import generate

PROMPT, GEN = 300, 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"decode-{request.param}")
    write_tiny_checkpoint(path, request.param, num_layers=3, hidden_size=64, num_heads=4, seed=5)
    return load_model(path)


def _prompt(model, length: int = PROMPT, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size - 64, (batch, length), generator=g)


def _profile(model, folder) -> str:
    """A MaskKV layer profile (any values): with it each layer is evicted right after its attention."""
    from maskkv.presses.profile import save_profile

    path = folder / "profile.json"
    save_profile(path, model.config, [1.0, 0.5, 2.0], samples=1, gen_length=8, data="test")
    return str(path)


def _denoiser(model, system: str, block_length: int = GEN, profile: str | None = None):
    if system == "vanilla":
        return model
    if system.startswith("fast-"):
        return FastDLLMCache(system.removeprefix("fast-")).bind(model, PROMPT, block_length=block_length)
    if system == "maskkv-offline":
        press = MaskKVPress(32, profile=profile)
    else:
        press = make_press(system, 32) if system != "dllm-cache" else None
    return DLLMCache().bind(model, PROMPT, press=press, block_length=block_length)


def _counts(model, system: str, block_length: int = GEN, **options):
    inner = _denoiser(model, system, block_length)
    out, counts = count_decode_steps(
        inner,
        lambda m: generate(m, _prompt(model), gen_length=GEN, steps=GEN, block_length=block_length, **options),
        block_first_pass=system.startswith("fast-"),
    )
    return out, counts


# ----- item 1: no host synchronisation --------------------------------------------------------------


def test_the_counter_sees_every_kind_of_sync():
    """The counter must be able to fail: each kind of host read or data-dependent shape is counted."""
    x = torch.arange(6.0)
    mask = x > 2
    counter = OpCounter()
    with counter:
        counter.segment()
        x.sum().item()
        bool(x.any())
        x.nonzero()
        torch.unique(x)
        x[mask]
        x.masked_select(mask)
        y = x.clone()
        y[mask] = 0.0
        counter.segment()
        x.topk(2)
        x[torch.tensor([1, 2])]
    assert counter.steps[0].sync_count == 7, dict(counter.steps[0].syncs)
    assert counter.steps[1].sync_count == 0 and counter.steps[1].total > 0


@pytest.mark.parametrize(
    "system", ["vanilla", "dllm-cache", "maskkv", "snapkv", "adakv", "fast-prefix", "fast-dual"]
)
def test_steady_state_decode_steps_have_no_host_sync(model, system):
    out, counts = _counts(model, system)
    summary = counts.summary()
    assert summary["steady_steps"] == GEN - 1
    assert summary["syncs_per_step_max"] == 0, summary["sync_ops"]
    assert summary["syncs_outside_steps"] <= 1  # the canvas check after the loop
    assert not bool((out.sequences == model.config.mask_token_id).any())


@pytest.mark.parametrize("system", ["maskkv", "fast-dual"])
def test_no_host_sync_with_several_blocks(model, system):
    _, counts = _counts(model, system, block_length=8)
    assert counts.summary()["syncs_per_step_max"] == 0, counts.summary()["sync_ops"]


def test_threshold_decoding_reads_once_per_step(model):
    """Threshold decoding commits a data-dependent count: one read of the masks left per step, no more."""
    _, counts = _counts(model, "maskkv", threshold=0.3)
    syncs = counts.syncs_per_step()
    assert syncs and max(syncs) == 1 and min(syncs) == 1, counts.summary()["sync_ops"]


def _propose_mask(model, monkeypatch) -> None:
    """A pass asking for 8 rows (a block's first step, or any step that still has 8 masks) proposes [MASK]
    with certainty at its second row: committed, that position stays masked."""
    plain = type(model).project

    def project(self, hidden):
        logits = plain(self, hidden)
        if hidden.shape[-2] == 8:
            logits[..., 1, self.config.mask_token_id] = 1e4
        return logits

    monkeypatch.setattr(type(model), "project", project)


@pytest.mark.parametrize("system", ["vanilla", "maskkv", "fast-dual"])
def test_a_committed_mask_token_reruns_with_device_reads(model, system, monkeypatch):
    """The host schedule assumes committed tokens are real; a model committing [MASK] leaves a mask, and
    the call re-runs with the reference's device reads: the result equals the always-synced loop's, and
    differs from what the sync-free loop alone returned."""
    sampling = importlib.import_module("maskkv.sampling.generate")  # the module (the package exports a function)
    prompt = _prompt(model, seed=11)
    kwargs = dict(gen_length=16, steps=16, block_length=8)
    _propose_mask(model, monkeypatch)
    out = generate(_denoiser(model, system, block_length=8), prompt, **kwargs)

    def loop(synced):
        def run(steps, m, plan, options):
            with sampling._blocks_announced(m):
                x, nfe, steps_run, _ = steps(m, plan, synced=synced, **options)
            return x, nfe, steps_run

        return run

    monkeypatch.setattr(sampling, "_run_steps", loop(True))
    reference = generate(_denoiser(model, system, block_length=8), prompt, **kwargs)
    monkeypatch.setattr(sampling, "_run_steps", loop(False))
    sync_free_only = generate(_denoiser(model, system, block_length=8), prompt, **kwargs)
    assert torch.equal(out.sequences, reference.sequences)
    assert not torch.equal(sync_free_only.sequences, reference.sequences)  # the re-run was needed


def test_a_committed_mask_token_without_reset_is_reported(model, monkeypatch):
    class NoReset:  # a wrapper that cannot start the request over
        config = model.config

        def logits_at(self, *args):
            return model.logits_at(*args)

    _propose_mask(model, monkeypatch)
    with pytest.raises(RuntimeError, match="no reset"):
        generate(NoReset(), _prompt(model, 20), gen_length=8, steps=8)


@pytest.mark.parametrize("system", ["vanilla", "maskkv"])
def test_the_bench_wrappers_follow_a_committed_mask_re_run(model, system, monkeypatch):
    """The bench's PassTimer and the op counter's wrapper pass ``reset`` on: same tokens as unwrapped."""
    from maskkv.bench.opcount import _CountedDenoiser
    from maskkv.bench.systems import PassTimer

    prompt, kwargs = _prompt(model, seed=11), dict(gen_length=16, steps=16, block_length=8)
    _propose_mask(model, monkeypatch)
    plain = generate(_denoiser(model, system, block_length=8), prompt, **kwargs)
    for wrap in (PassTimer, lambda inner: _CountedDenoiser(inner, OpCounter())):
        wrapped = generate(wrap(_denoiser(model, system, block_length=8)), prompt, **kwargs)
        assert torch.equal(wrapped.sequences, plain.sequences)


# ----- item 2: at most 50 aten ops per layer per step ------------------------------------------------


def test_maskkv_decode_step_is_at_most_50_ops_per_layer(model):
    """MaskKV on dLLM-Cache, 3 layers, prompt 300, gen/block 32, budget 32: every steady step <= 50 ops/layer."""
    _, counts = _counts(model, "maskkv")
    summary = counts.summary()
    assert summary["ops_per_layer_per_step_max"] <= 50, summary
    _, plain = _counts(model, "dllm-cache")
    assert plain.summary()["ops_per_layer_per_step_max"] <= 50


def test_v_verify_refreshes_the_chosen_rows_in_place(model):
    """V-verify writes the chosen rows' K (and V) into the cache through the ``[B, G, Hkv, hd]`` row views:
    with ``refresh_all_values`` every response V is fresh; without it exactly the rows whose K were
    refreshed get the fresh V and every other row keeps its cached V."""
    prompt = _prompt(model, seed=13)
    canvas = torch.cat([prompt, torch.full((1, GEN), model.config.mask_token_id)], dim=1)
    positions = torch.arange(PROMPT, PROMPT + GEN)
    caches = {flag: DLLMCache(refresh_all_values=flag).bind(model, PROMPT) for flag in (True, False)}
    for cache in caches.values():
        cache.logits_at(canvas, None, positions)  # first pass
    before = [(layer.resp_k.clone(), layer.resp_v.clone()) for layer in caches[False].layers]
    canvas[0, PROMPT : PROMPT + 6] = prompt[0, :6]  # some tokens committed
    for cache in caches.values():
        cache.logits_at(canvas, None, positions)  # pass 2: V-verify (layer 0 refreshes every row)
        assert cache.passes[-1].rows_per_layer == [GEN] + [GEN // 4] * (model.config.num_layers - 1)
    # layer 1: the first V-verified layer, whose input is the same in both caches (layer 0 refreshed every row)
    layer, fresh, (k_before, v_before) = caches[False].layers[1], caches[True].layers[1], before[1]
    assert torch.equal(layer.resp_k, fresh.resp_k)  # the same rows chosen, the same K written
    refreshed = (layer.resp_k != k_before).transpose(1, 2).flatten(2).any(-1)[0]  # [G]
    assert int(refreshed.sum()) == GEN // 4
    assert torch.equal(layer.resp_v[:, :, refreshed], fresh.resp_v[:, :, refreshed])
    assert torch.equal(layer.resp_v[:, :, ~refreshed], v_before[:, :, ~refreshed])
    assert not torch.equal(fresh.resp_v[:, :, ~refreshed], v_before[:, :, ~refreshed])  # all V fresh there


def test_fused_projections_are_views_of_one_matrix_and_match_the_separate_layers(model):
    layer = model.layers[0]
    h = torch.randn(2, 7, model.config.hidden_size)
    with torch.inference_mode():
        fused = layer._fused_linear(h, transformer.QKV)
        gate_up = layer._fused_linear(h, transformer.GATE_UP)
    separate = torch.cat([layer.q_proj(h), layer.k_proj(h), layer.v_proj(h)], dim=-1)
    assert torch.equal(fused, separate)  # one GEMM, bit-identical on CPU
    assert torch.equal(gate_up, torch.cat([layer.gate_proj(h), layer.up_proj(h)], dim=-1))
    weight, _ = layer.fused_weights(transformer.QKV)
    assert layer.q_proj.weight.data_ptr() == weight.data_ptr()  # no second copy of the weights
    names = set(model.state_dict())
    assert "layers.0.q_proj.weight" in names and not any("fused" in n or "qkv" in n for n in names)


def test_replacing_a_projection_fuses_the_weights_again(tmp_path):
    write_tiny_checkpoint(tmp_path / "m", "llada", num_layers=1, seed=3)
    model = load_model(tmp_path / "m")
    ids = _prompt(model, 12)
    before = model(ids).logits
    with torch.no_grad():
        model.layers[0].k_proj.weight.mul_(2.0)  # in place: the fused matrix sees it
    after_inplace = model(ids).logits
    model.layers[0].k_proj.weight = torch.nn.Parameter(model.layers[0].k_proj.weight.detach() / 2.0)  # replaced
    after_replace = model(ids).logits
    assert not torch.equal(before, after_inplace)
    torch.testing.assert_close(after_replace, before, atol=1e-6, rtol=0)


def test_training_path_gets_gradients_for_every_projection(tmp_path):
    write_tiny_checkpoint(tmp_path / "m", "dream", num_layers=1, seed=4)
    model = load_model(tmp_path / "m")
    model.unpack_lm_head()  # the packed CPU head has no autograd
    model.requires_grad_(True)
    with torch.inference_mode():
        model(_prompt(model, 9))  # fuses the weights first
    model(_prompt(model, 9)).logits.sum().backward()
    layer = model.layers[0]
    for name in (*transformer.QKV, *transformer.GATE_UP):
        assert getattr(layer, name).weight.grad is not None, name


def test_fused_rmsnorm_is_the_reference_in_fp32():
    norm = transformer.RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 17, 64) * 3
    x32 = x.float()
    reference = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5))
    with torch.inference_mode():
        fused = norm(x)  # F.rms_norm
    assert torch.equal(fused, reference)
    assert torch.equal(norm(x), reference)  # with autograd: the formula itself


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_fused_inference_forward_equals_the_unfused_training_forward(tmp_path, family):
    """Fused q/k/v and gate/up GEMMs, fused RMSNorm and the RoPE tables (inference) against the separate
    projections and the formula (the autograd path): bit-identical logits on this CPU."""
    write_tiny_checkpoint(tmp_path / "m", family, num_layers=2, seed=9)
    model = load_model(tmp_path / "m")
    ids = _prompt(model, 30, batch=2)
    with torch.inference_mode():
        fused = model(ids).logits
    model.requires_grad_(True)
    unfused = model(ids).logits.detach()
    assert torch.equal(fused, unfused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_fp32", [True, False])
def test_rope_table_rotates_like_apply_rotary(dtype, in_fp32):
    cos, sin = rotary_cos_sin(torch.arange(40, 52)[None], inverse_frequencies(8, 500000.0))
    t = torch.randn(1, 12, 5, 8).to(dtype)  # [B, T, heads, hd]
    expected = apply_rotary(t.transpose(1, 2), cos, sin, in_fp32=in_fp32).transpose(1, 2)
    table = RopeTable.build(cos, sin, in_fp32=in_fp32, dtype=dtype)
    got = table.rotate_(t.clone())
    assert torch.equal(got, expected)


# ----- item 3: the lean first pass ---------------------------------------------------------------


def test_row_chunks_cover_the_rows_without_a_single_row_tail():
    assert transformer.row_chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert transformer.row_chunks(9, 4) == [(0, 4), (4, 9)]  # no one-row tail (a GEMV sums differently)
    assert transformer.row_chunks(3, 8) == [(0, 3)]
    for rows in range(1, 40):
        chunks = transformer.row_chunks(rows, 5)
        assert chunks[0][0] == 0 and chunks[-1][1] == rows
        assert all(b - a >= 2 or rows == 1 for a, b in chunks)
        assert all(a2 == b1 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))


def _recorded_logits(model, system: str, prompt, profile: str | None = None):
    calls = []

    class Recorder:
        config = model.config
        full_logits = False

        def __init__(self, inner):
            self.inner = inner

        def begin_block(self, start, end):
            self.inner.begin_block(start, end)

        def logits_at(self, *args):
            calls.append(self.inner.logits_at(*args))
            return calls[-1]

    inner = _denoiser(model, system, block_length=8, profile=profile)
    out = generate(Recorder(inner), prompt, gen_length=16, steps=16, block_length=8)
    return out.sequences, calls


@pytest.mark.parametrize("system", ["dllm-cache", "maskkv", "maskkv-offline", "fast-prefix"])
def test_chunked_first_pass_equals_the_unchunked_one(model, system, monkeypatch, tmp_path):
    """Row chunks of 16 (q/k/v, attention rows, MLP) give bit-identical logits at every pass."""
    prompt = _prompt(model, PROMPT, seed=3)
    profile = _profile(model, tmp_path)
    sequences, calls = _recorded_logits(model, system, prompt, profile)
    monkeypatch.setattr(transformer, "MIN_ROW_CHUNK", 16)
    monkeypatch.setattr(transformer, "ROW_CHUNK_BYTES", 1)
    assert model.row_chunk() == 16
    chunked_sequences, chunked_calls = _recorded_logits(model, system, prompt, profile)
    assert torch.equal(chunked_sequences, sequences)
    assert len(chunked_calls) == len(calls) == 16
    for a, b in zip(chunked_calls, calls):
        assert torch.equal(a, b)


def _rope_tables_per_pass(layers: int, system: str, folder) -> list[int]:
    """RoPE tables built in each pass (``aten.cos`` ops: one per table) of a ``layers``-layer LLaDA, with
    16-row chunks; dLLM-Cache refreshes the prompt at passes 1, 4 and 7, Fast-dLLM starts a block at 1 and 5."""
    write_tiny_checkpoint(folder, "llada", num_layers=layers, hidden_size=64, num_heads=4, seed=5)
    small = load_model(folder)
    assert small.row_chunk() == 16
    if system == "fast-prefix":
        block, denoiser = 4, FastDLLMCache("prefix").bind(small, PROMPT, block_length=4)
    else:
        press = make_press("maskkv", 32) if system == "maskkv" else None
        block, denoiser = 8, DLLMCache(prompt_interval=3).bind(small, PROMPT, press=press, block_length=8)
    run = lambda m: generate(m, _prompt(small), gen_length=8, steps=8, block_length=block)  # noqa: E731
    _, counts = count_decode_steps(denoiser, run)
    return [step.ops["aten.cos.default"] for step in counts.steps if step.kind == "pass"]


@pytest.mark.parametrize("system", ["dllm-cache", "maskkv", "fast-prefix"])
def test_a_pass_builds_its_rope_table_once_for_all_layers(system, monkeypatch, tmp_path):
    """The first pass, prompt refreshes and Fast-dLLM's block forwards build the table of their rows once
    (plus the response rows' table, once per request) and every layer and row chunk takes a view of it:
    the count does not grow with the number of layers or chunks."""
    monkeypatch.setattr(transformer, "MIN_ROW_CHUNK", 16)
    monkeypatch.setattr(transformer, "ROW_CHUNK_BYTES", 1)
    one, four = (_rope_tables_per_pass(n, system, tmp_path / str(n)) for n in (1, 4))
    assert one == four, (one, four)
    if system == "fast-prefix":
        assert four == [1, 1, 0, 0, 1, 1, 0, 0]  # each block: its forward, then its query rows (second pass)
    else:
        assert four[0] == 2 and four[3] == four[6] == 1 and sum(four) == 4  # first pass (+ response rows), refreshes


def test_first_pass_releases_each_layers_full_kv_after_eviction(model, tmp_path):
    """Layer-by-layer eviction: the cache's peak holds one layer's full K/V beside the kept sets."""
    denoiser = _denoiser(model, "maskkv-offline", profile=_profile(model, tmp_path))
    generate(denoiser, _prompt(model), gen_length=GEN, steps=GEN, block_length=GEN)
    cfg = model.config
    full_layer_kv = 2 * cfg.num_kv_heads * (PROMPT + GEN) * cfg.head_dim * 4
    assert denoiser.stats.peak_bytes <= full_layer_kv + denoiser.stats.total_bytes


def test_replacing_the_prompt_kv_releases_the_old_buffer():
    """Eviction frees the layer's full K/V at once: no memo of response views keeps the old buffer alive."""
    import weakref

    from maskkv.cache.state import LayerCache, RaggedPrompt

    def layer() -> LayerCache:
        k, v = torch.randn(1, 2, 10 + 4, 8), torch.randn(1, 2, 10 + 4, 8)
        out = LayerCache(k=k, v=v, prompt_slots=10, prompt_valid=None, resp_attn=torch.zeros(1, 4, 16),
                         resp_mlp=torch.zeros(1, 4, 16))
        out.resp_k  # the views memo now refers to the full buffer
        return out

    cache = layer()
    old = weakref.ref(cache.k)
    cache.replace_prompt(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), None)
    assert old() is None and cache.k.shape[2] == 3 + 4
    cache = layer()
    old = weakref.ref(cache.k)
    counts = torch.tensor([[2, 3]])
    cache.store_ragged(RaggedPrompt(k=torch.randn(5, 8), v=torch.randn(5, 8), counts=counts,
                                    offsets=torch.tensor([0, 2, 5]), slot_rows=torch.tensor([[[0, 1, 0], [2, 3, 4]]]),
                                    valid=torch.tensor([[[True, True, False], [True, True, True]]])))
    assert old() is None and cache.k.shape[2] == 4


# ----- items 4 and 5: the capture path (CUDA graphs run in tests/test_cuda.py) -----------------------


class _StaticPositions:
    """A denoiser asking the sampler for every position of its block, as CUDA-graph replay does."""

    static_positions = True

    def __init__(self, inner):
        self.inner, self.config = inner, inner.config
        self.full_logits = getattr(inner, "full_logits", True)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("system", ["vanilla", "maskkv", "fast-dual"])
def test_whole_block_positions_give_the_same_tokens(model, system):
    """The fixed-shape steps that CUDA graphs replay (logits for the whole block) decode the same tokens."""
    prompt = _prompt(model, seed=7)
    kwargs = dict(gen_length=16, steps=16, block_length=8)
    plain = generate(_denoiser(model, system, block_length=8), prompt, **kwargs)
    static = generate(_StaticPositions(_denoiser(model, system, block_length=8)), prompt, **kwargs)
    assert torch.equal(static.sequences, plain.sequences)


#: Tensors a steady pass may rebind: scratch that the same pass writes before it reads it (the response stream
#: that the pass's own projection reads).
PASS_SCRATCH = {"._resp_stream"}


def _tensors_held(obj, path: str = "", depth: int = 0, seen: set | None = None, out: dict | None = None) -> dict:
    """``{attribute path: tensor}`` of every tensor a denoiser holds (the model's excepted)."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        out[path] = obj
        return out
    if depth > 4 or id(obj) in seen or isinstance(obj, (torch.nn.Module, str, int, float, bool, type(None))):
        return out
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__"):
        items = vars(obj).items()
    else:
        return out
    for key, value in items:
        _tensors_held(value, f"{path}.{key}", depth + 1, seen, out)
    return out


def _held_addresses(obj) -> dict:
    """``{attribute path: (data_ptr, shape, dtype)}``: where each tensor a denoiser holds lives."""
    return {path: (t.data_ptr(), tuple(t.shape), t.dtype) for path, t in _tensors_held(obj).items()}


@pytest.mark.parametrize("system", ["dllm-cache", "maskkv", "adakv", "fast-prefix", "fast-dual"])
def test_replayed_passes_rebind_no_tensor_the_denoiser_keeps(model, system):
    """What CUDA-graph replay needs: a replay runs no Python, so a steady pass after the first of its kind (the
    pass that is captured) may change what the denoiser holds only in place. A rebound tensor would keep its
    capture-time value on replay, or sit in the graphs' shared pool where another graph's replay overwrites it."""
    prompt = _prompt(model, 120, seed=3)
    if system.startswith("fast-"):
        denoiser = FastDLLMCache(system.removeprefix("fast-")).bind(model, 120, block_length=8)
    else:
        press = None if system == "dllm-cache" else make_press(system, 16)
        denoiser = DLLMCache().bind(model, 120, press=press, block_length=8)
    steady = denoiser.decode_pass
    seen_kinds: set = set()
    rebound: dict = {}
    passes = []

    def watched(*args):
        kind = (denoiser._block.index, args[2]) if system.startswith("fast-") else (args[2], tuple(args[1].shape))
        before = _held_addresses(denoiser)
        logits = steady(*args)
        after = _held_addresses(denoiser)
        if kind in seen_kinds:
            changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
            rebound.update(dict.fromkeys(changed - PASS_SCRATCH, kind))
        seen_kinds.add(kind)
        passes.append(kind)
        return logits

    denoiser.decode_pass = watched
    generate(_StaticPositions(denoiser), prompt, gen_length=24, steps=24, block_length=8)  # shapes as on CUDA
    assert len(seen_kinds) >= 2 and len(passes) >= 2 * len(seen_kinds)  # kinds that replay
    assert not rebound, rebound


class _EmulatedGraphs:
    """CUDA-graph semantics on the CPU, for :class:`maskkv.cache.graphs.StepGraphs`: a capture runs the pass's
    Python but none of its effects stay (every tensor the denoiser holds is restored), and a replay writes the
    pass's result into the captured output buffer. Together with the test above (a replay rebinds nothing)
    this checks the bookkeeping around the graphs (keys, fixed inputs, reused outputs, clearing) for tokens."""

    def __init__(self, owner) -> None:
        self.owner = owner

    def warm_up(self, fn, inputs):
        return fn(*inputs)

    def capture(self, fn, inputs):
        saved = [(t, t.clone()) for t in _tensors_held(self.owner).values()]
        output = fn(*inputs)
        for tensor, value in saved:
            tensor.copy_(value)  # a capture records kernels without running them
        return (fn, inputs, output, self._addresses()), output

    def replay(self, graph) -> None:
        fn, inputs, output, addresses = graph
        # recorded kernels read and write the buffers they were captured with: the denoiser must still hold them
        assert self._addresses() == addresses, "a graph replayed after the tensors it was captured on were replaced"
        output.copy_(fn(*inputs))

    def _addresses(self) -> dict:
        held = _held_addresses(self.owner)
        return {path: address for path, address in held.items()
                if path not in PASS_SCRATCH and not path.startswith(".graphs.")}


@pytest.mark.parametrize("system,options", [
    ("dllm-cache", {}), ("maskkv", {}), ("adakv", {}), ("snapkv", {}), ("fast-prefix", {}), ("fast-dual", {}),
    ("dllm-cache", {"remasking": "origin"}),  # Dream: other positions each pass, a graph per shape
    ("maskkv", {"prompt_interval": 6}), ("adakv", {"prompt_interval": 6}),  # refreshes re-evict: graphs cleared
])  # fmt: skip
def test_emulated_graph_replay_decodes_like_the_eager_steps(model, system, options, monkeypatch):
    """The capture path end to end on the CPU (``CUDA`` emulated by :class:`_EmulatedGraphs`): graphs captured and
    replayed by kind and shape give exactly the eager tokens."""
    import maskkv.cache.engine as engine_module
    import maskkv.cache.fast_dllm as fast_module

    if options.get("remasking") == "origin" and model.config.family != "dream":
        pytest.skip("origin remasking is Dream's")
    prompt = _prompt(model, 120, seed=6)
    interval = options.pop("prompt_interval", 50)
    kwargs = dict(gen_length=24, steps=24, block_length=8, **options)

    def bind(graphs: bool):
        if system.startswith("fast-"):
            return FastDLLMCache(system.removeprefix("fast-"), cuda_graphs=graphs).bind(model, 120, block_length=8)
        press = None if system == "dllm-cache" else make_press(system, 16)
        cache = DLLMCache(prompt_interval=interval, cuda_graphs=graphs)
        return cache.bind(model, 120, press=press, block_length=8)

    torch.manual_seed(0)
    eager = generate(bind(False), prompt, **kwargs)
    for module in (engine_module, fast_module):
        monkeypatch.setattr(module, "graphs_usable", lambda tensor: True)
    denoiser = bind(True)
    denoiser.graphs.backend = _EmulatedGraphs(denoiser)
    torch.manual_seed(0)
    graphed = generate(denoiser, prompt, **kwargs)
    assert denoiser.static_positions and denoiser.graphs.failure is None
    assert denoiser.graphs.captures >= 2 and denoiser.graphs.replays >= 8
    assert torch.equal(graphed.sequences, eager.sequences)


def test_cuda_graph_option_is_ignored_off_cuda(model):
    prompt = _prompt(model, 40, seed=8)
    kwargs = dict(gen_length=16, steps=16, block_length=8, press=MaskKVPress(budget=8))
    plain = generate(model, prompt, cache=DLLMCache(), **kwargs)
    denoiser = DLLMCache(cuda_graphs=True).bind(model, 40, press=MaskKVPress(budget=8), block_length=8)
    graphed = generate(denoiser, prompt, gen_length=16, steps=16, block_length=8)
    assert torch.equal(graphed.sequences, plain.sequences)
    assert not denoiser.static_positions and denoiser.graphs.captures == 0


def _compiled_pass_matches_eager(make, first_pass, passes):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    eager, traced = make(), make()
    with torch.inference_mode():
        first_pass(eager)
        first_pass(traced)
        step = torch.compile(traced.decode_pass, fullgraph=True, backend="eager")  # tracing only: cheap
        for args in passes:
            assert torch.equal(step(*args), eager.decode_pass(*args))


def test_the_dllm_cache_decode_pass_traces_as_one_graph(model):
    """``torch.compile(fullgraph=True)`` of the steady pass: nothing in it breaks a graph (no host read,
    no data-dependent shape); the traced pass equals the eager one, V-verify and response refresh."""
    if model.config.family == "dream":
        pytest.skip("one family is enough for the tracing check")
    model.unpack_lm_head()  # oneDNN's packed weight is an opaque tensor that dynamo does not trace
    try:
        x = torch.cat([_prompt(model, 40), torch.full((1, 16), model.config.mask_token_id)], dim=1)
        positions = torch.arange(40, 56)

        def first(d):
            d.begin_block(40, 56)
            d.logits_at(x, None, positions)

        _compiled_pass_matches_eager(
            lambda: DLLMCache().bind(model, 40, press=MaskKVPress(budget=8), block_length=16), first,
            [(x, positions, False), (x, positions, True)],
        )
        _compiled_pass_matches_eager(
            lambda: FastDLLMCache("dual").bind(model, 40, block_length=16), first, [(x, positions, 56)]
        )
    finally:
        from maskkv.models.transformer import PackedLMHead, can_pack_lm_head

        if can_pack_lm_head(model.lm_head.weight):
            model.lm_head = PackedLMHead(model.lm_head.weight.detach())
