"""``GET /metrics``: Prometheus text of the engine's, the service's and the server's counters."""

from __future__ import annotations

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREFIX = "emotion_monitor_"


class LatencyHistogram:
    """Window-completion-to-event latency, in the buckets of :data:`LATENCY_BUCKETS_S`."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum = 0.0

    def observe_event(self, event: dict) -> None:
        """Count one event message's ``latency_ms``."""
        seconds = (event.get("latency_ms") or 0.0) / 1000
        self.sum += seconds
        i = next((i for i, b in enumerate(LATENCY_BUCKETS_S) if seconds <= b), -1)
        self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f"# HELP {name} Window completion to event latency.", f"# TYPE {name} histogram"]
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS_S, "+Inf"), self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {total}"]


def metrics_text(
    engine: dict,
    service: dict,
    server: dict,
    clients: int,
    streams: int,
    latency: LatencyHistogram,
    inference: dict | None = None,
) -> str:
    """The Prometheus exposition of the counters (``engine``, ``service``, ``server``: their
    ``stats`` dicts), the two gauges and the latency histogram; with ``inference`` (a remote
    model's ``tier_stats``, see ``models/ray_client.py``) the inference tier's too."""
    lines: list[str] = []

    def metric(name: str, kind: str, value: float, help_text: str) -> None:
        name = PREFIX + name
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"])

    metric("windows_total", "counter", engine["windows"], "Windows analysed.")
    metric("speech_windows_total", "counter", engine["speech_windows"], "Speech windows.")
    metric("events_total", "counter", engine["events"], "Events produced.")
    metric(
        "windows_dropped_total",
        "counter",
        engine["windows_dropped"],
        "Windows lost because their stream sent audio beyond its budget.",
    )
    metric(
        "chunks_dropped_total",
        "counter",
        service["chunks_dropped"],
        "Audio chunks dropped because their stream's budget of pending audio was full.",
    )
    metric(
        "streams_refused_total",
        "counter",
        service["streams_refused"],
        "Streams refused because the server was at capacity (max_streams).",
    )
    metric(
        "slow_clients_closed_total",
        "counter",
        server["slow_clients_closed"],
        "Subscribers closed (4008) because their queue was full of control messages.",
    )
    metric(
        "messages_queued_total",
        "counter",
        server["messages_queued"],
        "Messages queued to clients.",
    )
    metric(
        "messages_dropped_total",
        "counter",
        server["messages_dropped"],
        "Messages dropped from slow clients' queues.",
    )
    metric(
        "clients_refused_total",
        "counter",
        server["clients_refused"],
        "Connections refused because max_clients was reached.",
    )
    metric(
        "protocol_errors_total",
        "counter",
        server["protocol_errors"],
        "Bad client messages answered with an error.",
    )
    metric(
        "ingest_nonfinite_samples_total",
        "counter",
        server["nonfinite_samples"],
        "NaN/Inf samples received on /ingest, replaced by silence.",
    )
    metric("clients", "gauge", clients, "Connected event subscribers.")
    metric("streams", "gauge", streams, "Open streams.")
    lines += latency.lines(PREFIX + "latency_seconds")
    if inference is not None:
        lines += inference_lines(inference)
    return "\n".join(lines) + "\n"


def inference_lines(stats: dict) -> list[str]:
    """Prometheus lines of a remote inference tier: requests, retries, failed attempts,
    outages, whether it answers now, and the round trip of the model calls."""
    name = PREFIX + "inference_"
    out: list[str] = []
    for key, kind, help_text in (
        ("requests", "counter", "Windows sent to the inference tier (re-sends included)."),
        ("retries", "counter", "Windows sent again after a lost request."),
        ("failures", "counter", "Requests lost in transit (replica died, tier unreachable)."),
        ("outages", "counter", "Times the tier stayed unreachable past the retry window."),
        ("tier_up", "gauge", "1 while the inference tier answers, 0 during an outage."),
    ):
        total = f"{name}{key}_total" if kind == "counter" else f"{name}{key}"
        out += [f"# HELP {total} {help_text}", f"# TYPE {total} {kind}", f"{total} {stats[key]}"]
    rt = f"{name}round_trip_seconds"
    out += [
        f"# HELP {rt} Model calls through the tier, send to last answer.",
        f"# TYPE {rt} summary",
        f"{rt}_sum {stats['round_trip_seconds_sum']:.6f}",
        f"{rt}_count {stats['calls']}",
    ]
    return out
