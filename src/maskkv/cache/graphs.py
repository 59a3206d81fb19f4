"""CUDA-graph capture and replay of a cached denoiser's steady-state passes (issue 23, item 4).

After the first pass every shape of a decode step is fixed (the kept prompt sets, the response rows,
the block's positions when the sampler asks for the whole block), and the step reads no value on the
host (``maskkv.bench.opcount`` pins that on CPU). So each *kind* of steady pass (dLLM-Cache: a V-verify
pass or a response refresh; Fast-dLLM: the passes of one block) is captured once into a
``torch.cuda.CUDAGraph`` and replayed: one launch instead of ~50 kernels per layer.

The first pass of a kind runs eagerly on a side stream (CUDA graphs need a warm-up; its result is the
step's), then the same function is captured without running; later passes copy their inputs into the
captured input buffers and replay. Cache tensors are updated in place by the captured kernels, so a
pass that reallocates them (a prompt refresh that re-evicts) must :meth:`StepGraphs.clear` the graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch


@dataclass
class _Captured:
    graph: Any  # what the backend's capture returned (a torch.cuda.CUDAGraph)
    inputs: tuple[torch.Tensor, ...]
    output: Any


class CudaGraphBackend:
    """The CUDA primitives :class:`StepGraphs` uses, in one place (tests emulate them on the CPU)."""

    def __init__(self) -> None:
        self._pool: Any = None

    def warm_up(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> Any:
        """``fn(*inputs)`` run eagerly on a side stream (CUDA graphs need a warm-up before capture)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            result = fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return result

    def capture(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> tuple[Any, Any]:
        """``(graph, output)``: ``fn(*inputs)`` recorded, not run (its Python runs; its kernels do not)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = fn(*inputs)
        return graph, output

    def replay(self, graph: Any) -> None:
        """Run the recorded kernels again on the captured buffers (no Python of ``fn`` runs)."""
        graph.replay()


@dataclass
class StepGraphs:
    """The captured passes of one request, by kind; ``captures`` and ``replays`` count what ran."""

    captures: int = 0
    replays: int = 0
    failure: str | None = None  # why a capture failed: the passes then run eagerly
    backend: Any = field(default_factory=CudaGraphBackend)
    _graphs: dict[Hashable, _Captured] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every graph (the tensors they read or write were replaced)."""
        self._graphs.clear()

    def run(self, key: Hashable, inputs: tuple[torch.Tensor, ...], fn: Callable[..., Any]) -> Any:
        """``fn(*inputs)``: replayed from the graph of ``key``, or run eagerly and captured for next time.

        ``fn`` must depend on ``inputs`` only through their values (they are copied into fixed buffers)
        and on other state only through tensors it updates in place.
        """
        if self.failure is not None:
            return fn(*inputs)
        key = (key, tuple(tuple(t.shape) for t in inputs))  # a graph replays fixed shapes only
        entry = self._graphs.get(key)
        if entry is not None:
            for static, new in zip(entry.inputs, inputs):
                static.copy_(new)
            self.backend.replay(entry.graph)
            self.replays += 1
            return entry.output
        static_inputs = tuple(t.clone() for t in inputs)
        result = self.backend.warm_up(fn, static_inputs)  # the warm-up is this step's real pass
        try:
            graph, output = self.backend.capture(fn, static_inputs)  # the caches keep the warm-up's updates
        except Exception as err:  # noqa: BLE001 - an op that cannot be captured: stay eager, say why
            self.failure = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            self._graphs.clear()
            return result
        self._graphs[key] = _Captured(graph, static_inputs, output)
        self.captures += 1
        return result


def graphs_usable(tensor: torch.Tensor) -> bool:
    """CUDA graphs are used only for CUDA tensors (elsewhere the option is accepted and ignored)."""
    return tensor.device.type == "cuda" and torch.cuda.is_available()
