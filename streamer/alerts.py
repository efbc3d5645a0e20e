"""Alerts: rules over the smoothed event stream, per (stream, track), plus an optional webhook.

A rule (:class:`~emotion_monitor.streamer.settings.AlertRule`) fires once when all its conditions
have held on a track for ``min_duration`` seconds of *stream* time (so a file replayed faster
than real time alerts at the same places), and re-arms when a condition stops holding.

Alert messages are protocol-v1 dicts::

    {"type": "alert", "v": 1, "stream": "CA12", "track": "customer",
     "name": "customer_frustration", "t": 12.5, "since": 7.5,
     "values": {"classes_smooth.angry": 0.83}, "time": 1700000000.0}

They reach the same listeners as events (``/ws`` clients, the recorder, the in-process API)
and, when a webhook URL is set, are POSTed as JSON by a background thread with bounded retries
and exponential backoff, so a slow or failing receiver never delays inference.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.events import PROTOCOL_VERSION
from emotion_monitor.streamer.settings import (
    CUSTOMER_FRUSTRATION,
    CUSTOMER_FRUSTRATION_VA,
    OPERATORS,
    AlertRule,
    condition_value,
    parse_alert_rules,
)

log = logging.getLogger(__name__)


@dataclass
class Alert:
    """One fired alert: rule ``name`` held on (``stream``, ``track``) from ``since`` to ``t``."""

    stream: str
    track: str
    name: str
    t: float
    since: float
    values: dict[str, float] = field(default_factory=dict)
    time: float = 0.0
    type: str = "alert"

    def to_dict(self) -> dict:
        """JSON-able protocol-v1 dict."""
        return {**asdict(self), "v": PROTOCOL_VERSION}

    @classmethod
    def from_dict(cls, data: dict) -> Alert:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def load_alert_rules(path: str | Path) -> tuple[AlertRule, ...]:
    """Read ``[[alerts]]`` tables from a TOML file.

    Example (the default rule, :data:`~emotion_monitor.streamer.settings.CUSTOMER_FRUSTRATION`)::

        [[alerts]]
        name = "customer_frustration"
        track = ["customer", "main"]
        min_duration = 5.0
        conditions = { "classes_smooth.angry" = [">", 0.4] }

    A table's keys are ``name``, ``conditions``, ``min_duration`` and ``track``; a condition
    compares one of :data:`~emotion_monitor.streamer.settings.CONDITION_FIELDS`. Anything else
    (a misspelled key or field, an unknown operator) raises ``ValueError`` naming the file, the
    table and the valid names.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read alert rules ({exc})") from None
    unknown = sorted(set(data) - {"alerts"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; only [[alerts]] tables")
    try:
        rules = parse_alert_rules(data.get("alerts", []))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not rules:
        raise ValueError(f"{path}: no [[alerts]] tables found")
    return rules


#: Condition fields only a model with valence/arousal outputs fills.
VALENCE_AROUSAL_FIELDS = ("valence", "arousal", "valence_smooth", "arousal_smooth")


def fit_rules_to_model(rules: Iterable[AlertRule], model: Any) -> tuple[AlertRule, ...]:
    """The rules, checked against what ``model`` (an ``EmotionModel``) outputs.

    A rule comparing an output the model lacks would never fire, so it raises ``ValueError``
    naming the rule, the field and the model's outputs. The default rule is the exception: on a
    model without an angry class it becomes :data:`CUSTOMER_FRUSTRATION_VA`, and it is left out
    (with a warning) when the model has neither.
    """

    def lacks(rule: AlertRule) -> str | None:
        for name, _, _ in rule.conditions:
            group, dot, label = name.partition(".")
            if (dot and label not in model.labels) or (
                name in VALENCE_AROUSAL_FIELDS and not model.has_valence_arousal
            ):
                return name
        return None

    out = []
    for rule in rules:
        if rule == CUSTOMER_FRUSTRATION and lacks(rule):
            rule = CUSTOMER_FRUSTRATION_VA
            if lacks(rule):
                log.warning(
                    "model %s has no angry class nor valence/arousal: no default alert", model.name
                )
                continue
        missing = lacks(rule)
        if missing:
            raise ValueError(
                f"alert rule {rule.name!r} compares {missing}, which model {model.name} does not "
                f"output (its classes: {', '.join(model.labels) or 'none'}; valence/arousal: "
                f"{'yes' if model.has_valence_arousal else 'no'})"
            )
        out.append(rule)
    return tuple(out)


class AlertEvaluator:
    """Pure rule evaluation: feed protocol messages, get alert messages. No I/O, no clock.

    State is kept per (stream, track, rule) and dropped on ``stream_ended``.
    """

    def __init__(self, rules: Iterable[AlertRule]):
        self.rules = tuple(rules)  # each AlertRule validated itself when it was built
        self._since: dict[tuple[str, str, str], float] = {}  # condition holding since t
        self._fired: set[tuple[str, str, str]] = set()

    @property
    def active_keys(self) -> int:
        """How many (stream, track, rule) states are held (0 once every stream ended)."""
        return len(self._since) + len(self._fired)

    def process(self, messages: Iterable[dict]) -> list[dict]:
        """Alert messages triggered by these messages (events and ``stream_ended``)."""
        return [alert for msg in messages for alert in self._take(msg)]

    def insert(self, messages: Iterable[dict]) -> list[dict]:
        """The messages with each alert right after the event that triggered it."""
        out = []
        for msg in messages:
            out.append(msg)
            out += self._take(msg)
        return out

    def _take(self, msg: dict) -> list[dict]:
        kind = msg.get("type")
        if kind == "event":
            return self._event(msg)
        if kind == "stream_ended":
            stream = msg.get("stream")
            self._since = {k: v for k, v in self._since.items() if k[0] != stream}
            self._fired = {k for k in self._fired if k[0] != stream}
        return []

    def _event(self, ev: dict) -> list[dict]:
        out = []
        for rule in self.rules:
            if not rule.applies_to(ev.get("track")):
                continue
            key = (ev["stream"], ev["track"], rule.name)
            if not _holds(rule, ev):
                self._since.pop(key, None)
                self._fired.discard(key)  # re-arm
                continue
            since = self._since.setdefault(key, float(ev["t1"]))
            if key not in self._fired and ev["t1"] - since >= rule.min_duration:
                self._fired.add(key)
                alert = Alert(
                    stream=ev["stream"],
                    track=ev["track"],
                    name=rule.name,
                    t=float(ev["t1"]),
                    since=since,
                    values={name: condition_value(ev, name) for name, _, _ in rule.conditions},
                    time=time.time(),
                )
                out.append(alert.to_dict())
        return out


def _holds(rule: AlertRule, ev: dict) -> bool:
    for name, op, threshold in rule.conditions:
        value = condition_value(ev, name)
        if not isinstance(value, (int, float)) or not OPERATORS[op](value, threshold):
            return False
    return True


class WebhookSender:
    """POSTs JSON payloads from a background thread with bounded retries and backoff.

    ``send`` never blocks: the queue is bounded and, when full, the oldest payload is dropped
    and counted. A payload is retried on connection errors and non-2xx answers up to
    ``retries`` times, waiting ``backoff * 2**attempt`` seconds between tries.
    """

    def __init__(
        self,
        url: str,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        queue_size: int = 1000,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()
        self.stats = {"sent": 0, "failed": 0, "dropped": 0, "attempts": 0}

    def send(self, payload: dict) -> None:
        """Queue one payload (non-blocking)."""
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.stats["dropped"] += 1
                except queue.Empty:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, retries included (within ``timeout``), then stop the thread."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._deliver(payload)
            finally:
                self._queue.task_done()

    def _deliver(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        for attempt in range(self.retries + 1):
            self.stats["attempts"] += 1
            try:
                request = urllib.request.Request(
                    self.url,
                    data=body,
                    method="POST",
                    headers={"Content-Type": "application/json", "User-Agent": "emotion-monitor"},
                )
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.stats["sent"] += 1
                return
            # HTTPException: an answer that is not HTTP (a bad status line, a short body); left
            # uncaught it would end the sender thread and no alert would be POSTed again.
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                reason = exc
            if attempt < self.retries:
                log.warning(
                    "webhook %s failed (%s); retry %d/%d",
                    self.url,
                    reason,
                    attempt + 1,
                    self.retries,
                )
                if self._stop.wait(self.backoff * 2**attempt):
                    break  # shutting down: give up on this payload
        self.stats["failed"] += 1
        log.error(
            "webhook %s: giving up on alert %s after %d attempts",
            self.url,
            payload.get("name"),
            attempt + 1,
        )


class AlertMonitor:
    """Evaluates rules on a service's batches and adds the alerts to them.

    It runs on the service's worker as a processor, so every listener gets an alert right after
    the event that completed its rule, and before that stream's ``stream_ended``; alerts are
    handed to the webhook thread, which never delays the worker.
    """

    def __init__(self, rules: Iterable[AlertRule], webhook_url: str | None = None, **webhook: Any):
        self.evaluator = AlertEvaluator(rules)
        self.webhook = WebhookSender(webhook_url, **webhook) if webhook_url else None
        self._service = None
        self.fired = 0

    def attach(self, service: Any) -> None:
        """Process every batch of ``service`` (a :class:`MonitorService`), with the rules fitted
        to its model (:func:`fit_rules_to_model`, whose ``ValueError`` this raises)."""
        self.evaluator = AlertEvaluator(
            fit_rules_to_model(self.evaluator.rules, service.engine.model)
        )
        self._service = service
        service.add_processor(self._process)

    def _process(self, messages: list[dict]) -> list[dict]:
        out = self.evaluator.insert(messages)
        if len(out) == len(messages):
            return messages
        for alert in (m for m in out if m.get("type") == "alert"):
            self.fired += 1
            log.info(
                "alert %s on %s/%s at t=%.1f s",
                alert["name"],
                alert["stream"],
                alert["track"],
                alert["t"],
            )
            if self.webhook is not None:
                self.webhook.send(alert)
        return out

    def close(self) -> None:
        """Stop processing the service's batches and flush the webhook queue."""
        if self._service is not None:
            self._service.remove_processor(self._process)
        if self.webhook is not None:
            self.webhook.close()
