"""Prometheus metrics of one gateway (prometheus_client), in their own registry.

Names and labels (documented in the operators' guide, "Metrics"):

- ``cpimgw_messages_in_total{adapter,operation}``: envelopes accepted (stored).
- ``cpimgw_messages_out_total{adapter,operation}``: envelopes delivered to a peer.
- ``cpimgw_messages_failed_total{adapter,reason}``: deliveries given up.
- ``cpimgw_rejected_total{adapter,reason}``: inbound envelopes refused (policy, routing, loop).
- ``cpimgw_duplicates_total{adapter}``: inbound envelopes dropped as already stored.
- ``cpimgw_retries_total{adapter,reason}``: delivery attempts rescheduled.
- ``cpimgw_reports_total{adapter,result}``: failure reports to senders (``sent``/``error``).
- ``cpimgw_signatures_total{state}``: signature checks under ``verify``/``require``.
- ``cpimgw_author_mismatches_total{adapter}``: CPIM From not the sender, let through
  (``[security] author = "off"``).
- ``cpimgw_presence_dropped_total``: NOTIFYs not passed on (no authorised watcher).
- ``cpimgw_delivery_latency_seconds{adapter}``: from receipt to delivery (histogram).
- ``cpimgw_queue_depth{adapter}``, ``cpimgw_queue_failed``, ``cpimgw_queue_oldest_age_seconds``.
- ``cpimgw_presence_subscriptions{state}``.
- ``cpimgw_adapter_ready{adapter}``: 1 while the adapter is connected.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.presence import SubscriptionState
from gateway.store import QueueStats

#: Latency buckets (seconds): sub-millisecond in-process hops up to queued retries.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class Metrics:
    """The gateway's counters, gauges and histograms (one registry per gateway)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_in = Counter(
            "cpimgw_messages_in", "Envelopes accepted", ["adapter", "operation"], registry=r
        )
        self.messages_out = Counter(
            "cpimgw_messages_out", "Envelopes delivered", ["adapter", "operation"], registry=r
        )
        self.failed = Counter(
            "cpimgw_messages_failed", "Deliveries given up", ["adapter", "reason"], registry=r
        )
        self.rejected = Counter(
            "cpimgw_rejected", "Inbound envelopes refused", ["adapter", "reason"], registry=r
        )
        self.duplicates = Counter(
            "cpimgw_duplicates", "Inbound duplicates dropped", ["adapter"], registry=r
        )
        self.retries = Counter(
            "cpimgw_retries", "Delivery attempts rescheduled", ["adapter", "reason"], registry=r
        )
        self.reports = Counter(
            "cpimgw_reports", "Failure reports to senders", ["adapter", "result"], registry=r
        )
        self.signatures = Counter("cpimgw_signatures", "Signature checks", ["state"], registry=r)
        self.author_mismatches = Counter(
            "cpimgw_author_mismatches",
            "Messages whose CPIM From is not their sender, let through ([security] author = off)",
            ["adapter"],
            registry=r,
        )
        self.presence_dropped = Counter(
            "cpimgw_presence_dropped", "NOTIFYs without an authorised watcher", registry=r
        )
        self.latency = Histogram(
            "cpimgw_delivery_latency_seconds",
            "Receipt to delivery",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cpimgw_queue_depth", "Pending queue entries", ["adapter"], registry=r
        )
        self.queue_failed = Gauge("cpimgw_queue_failed", "Failed entries kept", registry=r)
        self.queue_age = Gauge(
            "cpimgw_queue_oldest_age_seconds", "Age of the oldest pending entry", registry=r
        )
        self.subscriptions = Gauge(
            "cpimgw_presence_subscriptions", "Subscriptions by state", ["state"], registry=r
        )
        self.adapter_ready = Gauge(
            "cpimgw_adapter_ready", "1 while the adapter is ready", ["adapter"], registry=r
        )
        self._targets: set[str] = set()
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path asks for the same few often."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_queue(self, stats: QueueStats) -> None:
        for target in self._targets | set(stats.by_target):
            self.queue_depth.labels(target).set(stats.by_target.get(target, 0))
        self._targets |= set(stats.by_target)
        self.queue_failed.set(stats.failed)
        self.queue_age.set(stats.oldest_age)

    def observe_subscriptions(self, counts: dict[SubscriptionState, int]) -> None:
        for state, count in counts.items():
            self.subscriptions.labels(state.value).set(count)

    def render(self) -> bytes:
        """The text exposition format (``/metrics``)."""
        return bytes(generate_latest(self.registry))
