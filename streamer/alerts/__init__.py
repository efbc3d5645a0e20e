"""Alerts: rules (:mod:`.rules`), their evaluation on the event stream (:mod:`.evaluator`) and
the webhook that forwards them (:mod:`.webhook`)."""

from emotion_monitor.streamer.alerts.evaluator import AlertEvaluator, AlertMonitor
from emotion_monitor.streamer.alerts.rules import (
    CUSTOMER_FRUSTRATION,
    CUSTOMER_FRUSTRATION_VA,
    AlertRule,
    fit_rules_to_model,
    load_alert_rules,
    parse_alert_rules,
)
from emotion_monitor.streamer.alerts.webhook import WebhookSender
from emotion_monitor.streamer.protocol import Alert

__all__ = [
    "CUSTOMER_FRUSTRATION",
    "CUSTOMER_FRUSTRATION_VA",
    "Alert",
    "AlertEvaluator",
    "AlertMonitor",
    "AlertRule",
    "WebhookSender",
    "fit_rules_to_model",
    "load_alert_rules",
    "parse_alert_rules",
]
