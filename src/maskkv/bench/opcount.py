"""Count the aten ops and host synchronisations of a sampler's steady-state decode steps.

A :class:`OpCounter` is a ``TorchDispatchMode``: every aten op dispatched while it is active (the
cached forward *and* the sampler's work between forwards) is counted, and the ops that read a device
value on the host or produce a data-dependent shape are counted as **syncs**:

- ``aten::item`` / ``aten::_local_scalar_dense`` (``.item()``, ``int()``, ``float()``, ``bool()`` of a tensor),
  ``aten::is_nonzero``, ``aten::equal``, ``aten::allclose``;
- data-dependent shapes: ``nonzero``, ``unique*``, ``masked_select``, ``masked_scatter``,
  ``repeat_interleave`` of a count tensor without ``output_size``, and boolean-mask indexing
  (``index`` / ``index_put_`` with a bool index);
- a copy from a non-CPU device to the CPU (``.cpu()``, ``.tolist()`` of a device tensor). A ``.tolist()``
  of a CPU tensor dispatches no op at all, so on a CPU run only code review finds it.

On a GPU each of these stalls the host until the device catches up, and none of them can be captured
in a CUDA graph. :func:`count_decode_steps` wraps a denoiser so that the counts are split per forward
pass: step ``s`` holds the ops from the start of pass ``s`` to the start of the next segment (pass
``s + 1``, a block start, or the end of the sampler's loop), so the sampler's work after a pass belongs
to that pass's step. Ops on CPU tensors are counted alike: on a CPU run the counter cannot tell the
host's own tensors from the device's, so hot paths keep their bookkeeping in Python numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..sampling.wrapper import DenoiserWrapper

_aten = torch.ops.aten
# ops whose result the host must wait for, or whose output shape depends on tensor values
SYNC_OPS = frozenset(
    str(op)
    for op in (
        _aten._local_scalar_dense.default, _aten.item.default, _aten.is_nonzero.default, _aten.equal.default,
        _aten.allclose.default,
        _aten.nonzero.default, _aten.nonzero_numpy.default, _aten.argwhere.default, _aten.masked_select.default,
        _aten.masked_scatter.default, _aten.masked_scatter_.default, _aten.unique_dim.default,
        _aten._unique.default, _aten._unique2.default, _aten.unique_consecutive.default,
        _aten.unique_dim_consecutive.default,
    )
)  # fmt: skip
_INDEX_OPS = ("aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default", "aten._index_put_impl_.default")


def _sync_reason(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why the op ``name`` with these arguments synchronises, or None."""
    if name in SYNC_OPS:
        return name
    if name in _INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{name} (boolean mask)"
        return None
    if name.startswith("aten.repeat_interleave.Tensor") or name.startswith("aten.repeat_interleave.self_Tensor"):
        if kwargs.get("output_size") is None:
            return f"{name} (no output_size)"
        return None
    if name.startswith(("aten._to_copy", "aten.copy_")):
        source = args[0] if name.startswith("aten._to_copy") else args[1]
        target = kwargs.get("device")
        if name.startswith("aten.copy_"):
            target = args[0].device
        if isinstance(source, torch.Tensor) and source.device.type not in ("cpu", "meta"):
            if target is not None and torch.device(target).type == "cpu":
                return f"{name} (device to host)"
    return None


@dataclass
class StepCounts:
    """The ops of one segment: ``ops`` by aten overload name, ``syncs`` by reason.

    ``kind``: ``"pass"`` (a forward pass and the sampler's work up to the next segment), ``"block"``
    (a block's start: the sampler's per-block bookkeeping) or ``"end"`` (after the last step).
    """

    kind: str = "pass"
    ops: Counter = field(default_factory=Counter)
    syncs: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())


class OpCounter(TorchDispatchMode):
    """Counts aten ops and syncs (see the module docstring) into :attr:`steps`; ``segment()`` opens a new one."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[StepCounts] = []

    def segment(self, kind: str = "pass") -> None:
        """Start counting into a new :class:`StepCounts` of ``kind``."""
        self.steps.append(StepCounts(kind))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if self.steps:
            name = str(func)
            current = self.steps[-1]
            current.ops[name] += 1
            reason = _sync_reason(name, args, kwargs)
            if reason is not None:
                current.syncs[reason] += 1
        return func(*args, **kwargs)


class _CountedDenoiser(DenoiserWrapper):
    """Wraps a denoiser: each ``logits_at`` opens a ``pass`` segment, ``begin_block`` a ``block`` one,
    ``end_blocks`` (the sampler is done) an ``end`` one."""

    def __init__(self, inner: Any, counter: OpCounter) -> None:
        super().__init__(inner)
        self.counter = counter

    def begin_block(self, start: int, end: int) -> None:
        self.counter.segment("block")
        begin_block = getattr(self.inner, "begin_block", None)
        if begin_block is not None:
            begin_block(start, end)

    def end_blocks(self) -> None:
        self.counter.segment("end")
        end_blocks = getattr(self.inner, "end_blocks", None)
        if end_blocks is not None:
            end_blocks()

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor):
        self.counter.segment("pass")
        return super().logits_at(input_ids, attention_mask, positions)


@dataclass
class DecodeCounts:
    """Per-segment counts of one ``generate`` call.

    :attr:`steady` holds the decode steps: every ``pass`` segment except the request's first pass and,
    with ``block_first_pass`` (Fast-dLLM, whose block starts are full forwards), every block's first.
    """

    steps: list[StepCounts]
    layers: int
    block_first_pass: bool = False

    @property
    def steady(self) -> list[StepCounts]:
        out, seen_pass, after_block = [], False, False
        for segment in self.steps:
            if segment.kind == "block":
                after_block = True
                continue
            if segment.kind == "pass":
                if seen_pass and not (after_block and self.block_first_pass):
                    out.append(segment)
                seen_pass, after_block = True, False
        return out

    def ops_per_step(self) -> list[int]:
        return [s.total for s in self.steady]

    def syncs_per_step(self) -> list[int]:
        return [s.sync_count for s in self.steady]

    def summary(self) -> dict[str, Any]:
        """Ops and syncs per steady step (mean, max; ops also per layer), the sync ops by reason, and the
        syncs outside the steps (block starts, after the last step)."""
        ops, syncs = self.ops_per_step(), self.syncs_per_step()
        reasons: Counter = Counter()
        for s in self.steady:
            reasons.update(s.syncs)
        n = max(len(ops), 1)
        outside = sum(s.sync_count for s in self.steps if s.kind != "pass")
        return {
            "steady_steps": len(ops),
            "ops_per_step_mean": sum(ops) / n,
            "ops_per_step_max": max(ops, default=0),
            "ops_per_layer_per_step": sum(ops) / n / self.layers,
            "ops_per_layer_per_step_max": max(ops, default=0) / self.layers,
            "syncs_per_step_mean": sum(syncs) / n,
            "syncs_per_step_max": max(syncs, default=0),
            "sync_ops": dict(reasons),
            "syncs_outside_steps": outside,
        }


def count_decode_steps(
    denoiser: Any, run: Callable[[Any], Any], *, block_first_pass: bool = False,
    stop: type[BaseException] | None = None,
) -> tuple[Any, DecodeCounts]:
    """Run ``run(wrapped)`` (e.g. ``lambda m: generate(m, prompt, ...)``) with ``denoiser`` counted per segment.

    ``block_first_pass``: every block's first pass is a full forward, not a decode step (Fast-dLLM).
    ``stop``: an exception that ends the run early (e.g. a pass limit); the counts so far are kept.
    Returns ``run``'s result (None when stopped) and the counts.
    """
    counter = OpCounter()
    wrapped = _CountedDenoiser(denoiser, counter)
    result = None
    with counter:
        try:
            result = run(wrapped)
        except BaseException as err:
            if stop is None or not isinstance(err, stop):
                raise
            if counter.steps and counter.steps[-1].kind == "pass":
                counter.steps.pop()  # the pass that was stopped before it ran
    return result, DecodeCounts(counter.steps, denoiser.config.num_layers, block_first_pass)
