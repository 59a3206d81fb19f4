"""``maskkv serve``: an OpenAI-compatible HTTP server for LLaDA and Dream with MaskKV, batching and streaming.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client). See ``docs/serving.md``.
"""
