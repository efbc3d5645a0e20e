"""Alert evaluation: rules over the smoothed event stream, per (stream, track).

A rule (:class:`~emotion_monitor.streamer.alerts.rules.AlertRule`) fires once when all its
conditions have held on a track for ``min_duration`` seconds of *stream* time (so a file replayed
faster than real time alerts at the same places), and re-arms when a condition stops holding.

Alert messages are protocol-v1 dicts::

    {"type": "alert", "v": 1, "stream": "CA12", "track": "customer",
     "name": "customer_frustration", "t": 12.5, "since": 7.5,
     "values": {"classes_smooth.angry": 0.83}, "time": 1700000000.0}

They reach the same listeners as events (``/ws`` clients, the recorder, the in-process API)
and, when a webhook URL is set, go to the webhook thread
(:mod:`~emotion_monitor.streamer.alerts.webhook`), so a slow or failing receiver never delays
inference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from emotion_monitor.streamer.alerts.rules import (
    OPERATORS,
    AlertRule,
    condition_value,
    fit_rules_to_model,
)
from emotion_monitor.streamer.alerts.webhook import WebhookSender
from emotion_monitor.streamer.protocol import Alert

log = logging.getLogger(__name__)


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
