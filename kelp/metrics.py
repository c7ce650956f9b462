"""Prometheus metrics, the same way in every kelp process (prometheus-client).

Counters and histograms that events update live in each process's module-level metrics
(``broker.metrics``, ``gateway.metrics``, ...), registered in prometheus-client's default
registry with its process collector (CPU seconds, resident memory, open files). Values that are
state rather than events (a partition's offsets, a group's lag, open connections) are read when
scraped, by a ``StateCollector`` over a function returning them; ``route(state)`` is the
``/metrics`` handler each process serves on its HTTP port. A name ending in ``_total`` is a
counter read from state (a process's own cumulative counts), any other a gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kelp import httpd

# name -> (help, label names, samples as (label values, value))
Gauges = dict[str, tuple[str, tuple[str, ...], Iterable[tuple[tuple[str, ...], float]]]]


class StateCollector(Collector):
    """Gauges computed at scrape time from ``read()``: ``{name: (help, labels, samples)}``."""

    def __init__(self, read: Callable[[], Gauges]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for name, (documentation, labels, samples) in self.read().items():
            family: GaugeMetricFamily | CounterMetricFamily
            if name.endswith("_total"):
                family = CounterMetricFamily(name[:-len("_total")], documentation,
                                             labels=list(labels))
            else:
                family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family


def route(state: Callable[[], Gauges] | None = None) -> httpd.Handler:
    """The ``/metrics`` route: the process's event metrics and, read at each scrape, the
    gauges ``state`` returns (a registry of its own per route, so a process may serve several,
    as tests running many sidecars in one process do)."""
    private = CollectorRegistry(auto_describe=False)
    if state is not None:
        private.register(StateCollector(state))

    async def serve(request: httpd.Request) -> httpd.Response:
        return httpd.Response(200, generate_latest(REGISTRY) + generate_latest(private),
                              CONTENT_TYPE_LATEST, {})

    return serve
