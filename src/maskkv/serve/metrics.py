"""Prometheus metrics of ``maskkv serve`` (one registry per app, so several servers can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Requests by status, queue depth, batch sizes, tokens, kept prompt K/V share, cache bytes, latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("maskkv_requests", "Finished HTTP requests by endpoint and status code",
                                ("endpoint", "status"), registry=r)
        self.queue_depth = Gauge("maskkv_queue_depth", "Requests waiting for the model worker", registry=r)
        self.running = Gauge("maskkv_running_requests", "Requests in the batch being decoded", registry=r)
        self.in_flight = Gauge("maskkv_in_flight_requests", "Generation requests held by the server", registry=r)
        self.batch_size = Histogram("maskkv_batch_size", "Requests per decoded batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.prompt_tokens = Counter("maskkv_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("maskkv_generation_tokens",
                                         "Generated (decoded canvas) tokens of finished requests", registry=r)
        self.kept_share = Histogram("maskkv_kept_prompt_kv_share",
                                    "Share of the prompt K/V pairs kept by the press after the first pass",
                                    registry=r, buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))
        self.cache_bytes = Gauge("maskkv_cache_bytes", "Peak cache bytes of the last decoded batch", registry=r)
        self.latency = Histogram("maskkv_request_latency_seconds", "Time from arrival to the last block",
                                 registry=r, buckets=_LATENCY_BUCKETS)
        self.first_block = Histogram("maskkv_time_to_first_block_seconds",
                                     "Time from arrival to the first finished block", registry=r,
                                     buckets=_LATENCY_BUCKETS)

    def observe_result(self, result: dict[str, Any], *, has_press: bool) -> None:
        self.prompt_tokens.inc(result["prompt_tokens"])
        self.generation_tokens.inc(result["completion_tokens"])
        if has_press:
            self.kept_share.observe(result["kept_prompt_share"])
        self.latency.observe(result["queue_seconds"] + result["seconds"])
        if result["first_block_seconds"] is not None:
            self.first_block.observe(result["first_block_seconds"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
