"""maskkv as an lm-evaluation-harness model (extra ``maskkv[lmeval]``).

- :mod:`maskkv.lmeval.likelihood`: the LLaDA / Dream Monte Carlo log-likelihood estimators (torch only).
- :mod:`maskkv.lmeval.model`: ``MaskKVLM``, registered with lm-eval as ``maskkv`` when that module is imported.
- :mod:`maskkv.lmeval.cli`: ``maskkv lm-eval ARGS...``, lm-eval's own command line with the model registered.

Nothing here imports lm-eval until the model module is imported, so ``import maskkv`` and the ``maskkv``
command work without the extra.
"""
