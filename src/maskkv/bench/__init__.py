"""``maskkv bench``: speed and memory of vanilla decoding, dLLM-Cache, MaskKV and the baselines.

- :mod:`~maskkv.bench.architectures`: named random-weight models (``llada-8b``, ``llada-mini``, ``llada-tiny``).
- :mod:`~maskkv.bench.systems`: what is compared, and the per-pass timer.
- :mod:`~maskkv.bench.runner`: one configuration measured (in a fresh process on CPU).
- :mod:`~maskkv.bench.report`: table, JSON/CSV, the Figure-4-style plot, the issue's targets.
"""

from .architectures import ARCHITECTURES, architecture_config, build_random_model
from .runner import BenchConfig, measure, measure_isolated
from .systems import DEFAULT_SYSTEMS, SYSTEMS

__all__ = ["ARCHITECTURES", "DEFAULT_SYSTEMS", "SYSTEMS", "BenchConfig", "architecture_config",
           "build_random_model", "measure", "measure_isolated"]
