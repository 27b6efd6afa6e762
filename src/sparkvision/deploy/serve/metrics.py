"""Prometheus metrics of one app (its own registry, so several apps in a process never mix)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sparkvision_requests", "HTTP requests by endpoint and status code", ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sparkvision_request_latency_seconds", "Request latency, arrival to response", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "sparkvision_batch_size", "Images per ONNX Runtime call", buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_requests = Histogram(
            "sparkvision_batch_requests", "Requests grouped into one ONNX Runtime call", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "sparkvision_inference_seconds", "Time of one ONNX Runtime call", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("sparkvision_images", "Images classified", registry=self.registry)
        self.rejected = Counter(
            "sparkvision_rejected", "Requests refused, by error code", ["code"], registry=self.registry,
        )
        self.queue = Gauge("sparkvision_queue_images", "Images waiting for the model", registry=self.registry)
        self.started = Gauge("sparkvision_start_time_seconds", "Server start (Unix time)", registry=self.registry)
        self.started.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
