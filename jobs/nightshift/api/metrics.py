"""Prometheus metrics of the API: requests by route and status, latency histograms, freshness per model."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nightshift.api.reader import ModelStatus, PredictionReader

#: Latency buckets in seconds: fine below 10 ms, where a healthy lookup lands.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The status counted for a request whose client hung up before any response started (nginx's
#: "client closed request"): not a server error, and never sent to anyone.
CLIENT_CLOSED = 499


class ApiMetrics:
    """The API's collectors, with labelled children cached (a label lookup per request is measurable).

    Each app owns its registry (tests build many apps in one process). With several uvicorn
    workers each keeps its own counters: scrape them per worker, or run one worker per container.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nightshift_api_requests",
            "HTTP requests by route template, method and status (499: the client hung up before the answer)",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "nightshift_api_request_duration_seconds",
            "Time to answer a request, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_ids = Histogram(
            "nightshift_api_batch_ids",
            "Entity ids per batch request",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 10_000),
            registry=self.registry,
        )
        self.freshness = Gauge(
            "nightshift_api_prediction_age_seconds",
            "Age of the newest committed partition of each model's live (champion) version",
            ["model"],
            registry=self.registry,
        )
        self.live_version = Gauge(
            "nightshift_api_live_version", "Champion version served per model", ["model"], registry=self.registry
        )
        self.database_up = Gauge(
            "nightshift_api_database_up", "1 when the last catalog read succeeded", registry=self.registry
        )
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[(route, method, status)] = self.requests.labels(route, method, str(status))
        counter.inc()
        hist = self._histograms.get((route, method))
        if hist is None:
            hist = self._histograms[(route, method)] = self.latency.labels(route, method)
        hist.observe(seconds)

    def set_catalog(self, models: list[ModelStatus]) -> None:
        """Freshness and live version per model, from a catalog read."""
        self.database_up.set(1)
        self.freshness.clear()  # models no longer live lose their series
        self.live_version.clear()
        for m in models:
            age = m.age_seconds()
            if m.version is not None and age is not None:
                self.freshness.labels(m.model).set(age)
                self.live_version.labels(m.model).set(m.version)

    def watch_reader(self, current: Callable[[], PredictionReader | None]) -> None:
        """Expose the resolution cache's and the coalescer's counts (read at scrape time, not per request)."""
        self.registry.register(_ReaderCollector(current))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReaderCollector(Collector):
    def __init__(self, current: Callable[[], PredictionReader | None]) -> None:
        self.current = current

    def collect(self) -> Iterator[Metric]:
        reader = self.current()
        if reader is None:  # not started yet
            return
        cache = reader.cache
        family = CounterMetricFamily(
            "nightshift_api_resolution_cache", "Resolution cache lookups by result", labels=["result"]
        )
        family.add_metric(["hit"], cache.hits)
        family.add_metric(["miss"], cache.misses)
        yield family
        answers = reader.answers
        if answers is not None:
            tiers = CounterMetricFamily(
                "nightshift_api_answer_cache",
                "Entity lookups in the answer cache (keyed by committed run) by tier and result",
                labels=["tier", "result"],
            )
            if answers.entries > 0:
                tiers.add_metric(["memory", "hit"], answers.hits)
                tiers.add_metric(["memory", "miss"], answers.misses)
            redis = answers.redis
            if redis is not None:
                tiers.add_metric(["redis", "hit"], redis.hits)
                tiers.add_metric(["redis", "miss"], redis.misses)
            yield tiers
            yield GaugeMetricFamily(
                "nightshift_api_answer_cache_entries", "Answers held in this worker's LRU", value=len(answers)
            )
            if redis is not None:
                yield CounterMetricFamily(
                    "nightshift_api_answer_cache_redis_errors",
                    "Redis reads or writes that failed or timed out (Redis is then skipped for a few seconds)",
                    value=redis.errors,
                )
        coalescer = reader.coalescer
        if coalescer is not None:
            yield CounterMetricFamily(
                "nightshift_api_coalesced_lookups",
                "Single lookups answered through a shared statement",
                value=coalescer.lookups,
            )
            yield CounterMetricFamily(
                "nightshift_api_coalesced_statements",
                "Statements that answered coalesced single lookups (lookups / statements = sharing factor)",
                value=coalescer.statements,
            )
