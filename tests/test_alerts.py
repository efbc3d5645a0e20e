"""Alert rules on the event stream, their delivery to listeners and the webhook with retries."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from call_fixtures import (
    TIMEOUT,
    LoudnessModel,
    fast_settings,
    running,
    twilio_call,
)
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.alerts import (
    AlertEvaluator,
    AlertMonitor,
    WebhookSender,
    fit_rules_to_model,
    load_alert_rules,
)
from emotion_monitor.streamer.alerts.rules import (
    CUSTOMER_FRUSTRATION,
    CUSTOMER_FRUSTRATION_VA,
    AlertRule,
)
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import Alert
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings


def event(t1: float, track: str = "customer", stream: str = "c1", v=-0.5, a=0.7) -> dict:
    return {
        "type": "event",
        "stream": stream,
        "track": track,
        "seq": int(t1 * 2),
        "t0": t1 - 2,
        "t1": t1,
        "valence_smooth": v,
        "arousal_smooth": a,
    }


def test_fires_once_after_min_duration_per_track_and_rearms():
    ev = AlertEvaluator([CUSTOMER_FRUSTRATION_VA])
    fired = []
    for i in range(4, 30):  # t1 = 2.0 .. 14.5 in 0.5 s hops, frustrated the whole time
        t1 = i / 2
        fired += ev.process([event(t1), event(t1, track="agent")])
    assert len(fired) == 1  # once, and never for the agent
    alert = Alert.from_dict(fired[0])
    assert (alert.stream, alert.track, alert.name) == ("c1", "customer", "customer_frustration")
    assert alert.since == 2.0 and alert.t == 7.0  # 5 s of stream time
    assert alert.values == {"arousal_smooth": 0.7, "valence_smooth": -0.5}
    assert fired[0]["v"] == 1 and fired[0]["type"] == "alert"
    # calm for a moment re-arms the rule; 5 more seconds fire it again
    assert ev.process([event(15.0, v=0.2)]) == []
    again = []
    for i in range(31, 45):
        again += ev.process([event(i / 2)])
    assert [a["t"] for a in again] == [20.5]


def test_default_rule_watches_the_customer_and_a_single_speaker_source(tmp_path):
    # a call's customer, or the one track ("main") of a microphone, file or upload; never the agent
    ev = AlertEvaluator([CUSTOMER_FRUSTRATION])
    fired = []
    for i in range(4, 16):
        msgs = [event(i / 2, track=t) for t in ("customer", "agent", "main")]
        for m in msgs:
            m["classes_smooth"] = {"angry": 0.9}
        fired += ev.process(msgs)
    assert sorted(a["track"] for a in fired) == ["customer", "main"]
    # TOML takes a list of tracks; anything but strings is refused
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[[alerts]]\nname = "x"\ntrack = ["customer", "main"]\n'
        'conditions = { arousal_smooth = [">", 0.4] }\n'
    )
    assert load_alert_rules(path)[0].track == ("customer", "main")
    with pytest.raises(ValueError, match="track must be a string or a list of strings"):
        AlertRule("x", (("arousal_smooth", ">", 0.4),), track=("customer", 3))


def test_missing_values_and_other_streams_do_not_mix():
    ev = AlertEvaluator([CUSTOMER_FRUSTRATION_VA])
    msgs = []
    for i in range(0, 30):
        t1 = 2 + i / 2
        msgs += [event(t1, stream="a"), event(t1, stream="b", v=None if i == 5 else -0.5)]
    fired = ev.process(msgs)
    assert [(a["stream"], a["t"]) for a in fired] == [("a", 7.0), ("b", 10.0)]
    assert ev.active_keys > 0
    ev.process([{"type": "stream_ended", "stream": "a"}, {"type": "stream_ended", "stream": "b"}])
    assert ev.active_keys == 0


def test_rules_from_toml(tmp_path):
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[[alerts]]\nname = "agent_stress"\ntrack = "agent"\nmin_duration = 3\n'
        'conditions = { arousal_smooth = [">=", 0.6] }\n'
        '[[alerts]]\nname = "anyone_sad"\nconditions = { valence_smooth = ["<", -0.5] }\n'
    )
    rules = load_alert_rules(path)
    assert rules == (
        AlertRule("agent_stress", (("arousal_smooth", ">=", 0.6),), 3.0, "agent"),
        AlertRule("anyone_sad", (("valence_smooth", "<", -0.5),), 5.0, None),
    )
    path.write_text('[[alerts]]\nname = "x"\nconditions = { arousal_smooth = ["~", 1] }\n')
    with pytest.raises(ValueError, match="unknown operator"):
        load_alert_rules(path)
    path.write_text('[[alerts]]\nconditions = { arousal_smooth = [">", 1] }\n')
    with pytest.raises(ValueError, match="malformed"):
        load_alert_rules(path)


def test_rules_from_toml_refuse_duplicate_names(tmp_path):
    """The tracker keys its state by rule name: two rules with one name would share it."""
    table = '[[alerts]]\nname = "{}"\nconditions = {{ arousal_smooth = [">", 0.4] }}\n'
    path = tmp_path / "alerts.toml"
    path.write_text(table.format("loud") + table.format("quiet") + table.format("loud"))
    with pytest.raises(ValueError) as err:
        load_alert_rules(path)
    assert str(err.value) == (
        f"{path}: alerts[2] is malformed: duplicate name 'loud' (also alerts[0]); "
        "give each [[alerts]] table its own name"
    )
    settings = tmp_path / "settings.toml"  # the same check for [[alerts]] in a settings file
    settings.write_text(path.read_text())
    with pytest.raises(ValueError, match=r"settings\.toml: alerts\[2\] .*duplicate name 'loud'"):
        Settings.from_toml(settings)


@pytest.mark.parametrize(
    "table,problem",
    [
        # a misspelled field never holds: the alert would silently never fire
        (
            'name = "x"\nconditions = { arousl_smooth = [">", 0.4] }',
            "unknown field 'arousl_smooth'; conditions can compare seq, t0, t1, speech, "
            "speech_prob, valence, arousal, confidence, valence_smooth, arousal_smooth, "
            "latency_ms, clipped, or a class probability as classes_smooth.LABEL / classes.LABEL",
        ),
        (
            'name = "x"\nconditions = { classes_smooth = [">", 0.4] }',
            "unknown field 'classes_smooth'",
        ),
        (
            'name = "x"\nmin_duraton = 3\nconditions = { arousal_smooth = [">", 0.4] }',
            "unknown key(s) min_duraton; valid keys: name, conditions, min_duration, track",
        ),
        ('name = "x"\nconditions = { arousal_smooth = [">", "high"] }', "needs a number"),
        ('name = "x"\nconditions = { arousal_smooth = 0.4 }', "must be [operator, number]"),
        ('name = "x"\nconditions = {}', "no conditions"),
        ('name = "x"\nmin_duration = -1\nconditions = { valence = ["<", 0] }', "min_duration"),
    ],
)
def test_rules_from_toml_refuse_what_would_never_fire(tmp_path, table, problem):
    path = tmp_path / "alerts.toml"
    path.write_text(f"[[alerts]]\n{table}\n")
    with pytest.raises(ValueError) as err:
        load_alert_rules(path)
    assert str(err.value).startswith(f"{path}: alerts[0] is malformed: ")
    assert problem in str(err.value)


def test_documented_example_rule_is_the_default_rule(tmp_path):
    """The example in load_alert_rules' docstring is CUSTOMER_FRUSTRATION, threshold included."""
    doc = load_alert_rules.__doc__
    example = doc.split("::\n", 1)[1].split("\n\n    A table", 1)[0]
    path = tmp_path / "alerts.toml"
    path.write_text("\n".join(line.strip() for line in example.strip().splitlines()) + "\n")
    assert load_alert_rules(path) == (CUSTOMER_FRUSTRATION,)


class Receiver:
    """A local HTTP server that fails the first ``failures`` POSTs, then accepts."""

    def __init__(self, failures: int = 1, hold: threading.Event | None = None):
        self.bodies: list[dict] = []
        self.attempts = 0
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if hold is not None:
                    hold.wait(TIMEOUT)
                if outer.attempts <= failures:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()
                outer.got.set()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_retries_with_backoff_then_succeeds():
    rx = Receiver(failures=2)
    try:
        sender = WebhookSender(rx.url, retries=3, backoff=0.01)
        sender.send({"type": "alert", "name": "x"})
        assert rx.got.wait(TIMEOUT)
        sender.close()
    finally:
        rx.close()
    assert rx.bodies == [{"type": "alert", "name": "x"}]
    assert sender.stats == {"sent": 1, "failed": 0, "dropped": 0, "attempts": 3}


def test_webhook_gives_up_after_bounded_retries_and_never_blocks_the_caller():
    hold = threading.Event()
    rx = Receiver(failures=100, hold=hold)
    try:
        sender = WebhookSender(rx.url, retries=1, backoff=0.01, queue_size=2)
        for i in range(5):  # the receiver is stuck: send() still returns at once
            sender.send({"n": i})
        assert sender.stats["dropped"] >= 2  # bounded queue, oldest dropped
        hold.set()
        sender.close(timeout=TIMEOUT)
    finally:
        rx.close()
    assert sender.stats["sent"] == 0 and sender.stats["failed"] >= 1


async def test_alerts_reach_listeners_and_webhook_end_to_end():
    rule = AlertRule(
        "loud_customer", (("arousal_smooth", ">", 0.0),), min_duration=1.0, track="customer"
    )
    rx = Receiver(failures=1)
    settings = fast_settings(alerts=(rule,), webhook_url=rx.url)
    loud = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.3).astype(np.float32)
    try:
        async with running(settings=settings) as (server, col):
            await twilio_call(server, "CA5", loud, loud * 0.001)
            await col.ended(["CA5"])
            await col.wait_for(lambda: col.of_type("alert"))
        assert rx.got.wait(TIMEOUT)
    finally:
        rx.close()
    alerts = col.of_type("alert")
    assert [(a["stream"], a["track"], a["name"]) for a in alerts] == [
        ("CA5", "customer", "loud_customer")
    ]
    # the alert follows the event that completed the rule, never precedes it
    idx = col.messages.index(alerts[0])
    assert any(m["type"] == "event" and m["t1"] == alerts[0]["t"] for m in col.messages[:idx])
    assert rx.bodies[0]["name"] == "loud_customer"


def test_an_alert_raised_by_a_streams_last_events_comes_before_its_stream_ended():
    # The whole call is queued before the worker starts, so its events, the alert they raise
    # and stream_ended come out of one batch: a client that stops reading at stream_ended
    # (subscribe(until_ended=True), Monitor.events(streams=...)) must still get the alert.
    rule = AlertRule("loud", (("arousal_smooth", ">", 0.0),), min_duration=1.0)
    service = MonitorService(Engine(LoudnessModel(), fast_settings()))
    alerts = AlertMonitor((rule,))
    alerts.attach(service)
    got, ended = [], threading.Event()

    def listen(messages):
        got.extend(messages)
        if any(m["type"] == "stream_ended" for m in messages):
            ended.set()

    service.add_listener(listen)
    loud = (np.random.default_rng(0).standard_normal(16000 * 4) * 0.3).astype(np.float32)
    service.open_stream("s1")
    service.push("s1", loud)
    service.end_stream("s1")
    service.start()
    try:
        assert ended.wait(TIMEOUT)
    finally:
        service.stop()
    kinds = [m["type"] for m in got]
    assert kinds.count("alert") == 1 and alerts.fired == 1
    assert kinds.index("alert") < kinds.index("stream_ended")
    alert = got[kinds.index("alert")]
    assert got[kinds.index("alert") - 1]["t1"] == alert["t"]  # right after its event


async def test_frustrated_customer_alert_with_the_default_model(real_model):
    # strong angry utterances in a row (~12 s) from the customer, a sad agent
    def run_of(emotion: str) -> np.ndarray:
        return np.concatenate(
            [load_clip(ravdess_clip(emotion, sentence_index=i)) for i in range(4)]
            + [load_clip(ravdess_clip(emotion, speaker="Actor_20"))]
        )

    angry, sad = run_of("angry"), run_of("sad")
    settings = Settings(host="127.0.0.1", port=0, alerts=(CUSTOMER_FRUSTRATION,))
    async with running(real_model, settings) as (server, col):
        await twilio_call(server, "CA-angry", angry, sad)
        await col.ended(["CA-angry"])
    alerts = col.of_type("alert")
    assert [(a["track"], a["name"]) for a in alerts] == [("customer", "customer_frustration")]
    assert alerts[0]["t"] - alerts[0]["since"] >= 5.0


def test_rules_on_class_probabilities(tmp_path):
    # TOML reads the bare dotted key as a nested table; quoted, it is one key: both work
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[[alerts]]\nname = "anger"\nmin_duration = 1.0\n'
        'conditions = { classes_smooth.angry = [">", 0.4] }\n'
        '[[alerts]]\nname = "anger_now"\nmin_duration = 0.0\n'
        'conditions = { "classes.angry" = [">", 0.9] }\n'
    )
    rules = load_alert_rules(path)
    assert [r.conditions for r in rules] == [
        (("classes_smooth.angry", ">", 0.4),),
        (("classes.angry", ">", 0.9),),
    ]
    ev = AlertEvaluator(rules)
    fired = []
    for i, p_angry in enumerate([0.2, 0.5, 0.6, 0.95, 0.7]):
        e = event(2 + i / 2)
        e["classes_smooth"] = e["classes"] = {"angry": p_angry, "calm": 1 - p_angry}
        fired += ev.process([e])
    assert [(a["name"], a["t"], a["values"]) for a in fired] == [
        ("anger", 3.5, {"classes_smooth.angry": 0.95}),  # held above 0.4 since t = 2.5
        ("anger_now", 3.5, {"classes.angry": 0.95}),
    ]
    # a window without classes (no speech) does not hold
    assert ev.process([{**event(9.0), "classes_smooth": None}]) == []


def test_rules_are_fitted_to_what_the_model_outputs(real_model, tmp_path):  # noqa: F811
    # the shipped model has an angry class: the default rule stays as it is
    assert fit_rules_to_model([CUSTOMER_FRUSTRATION], real_model) == (CUSTOMER_FRUSTRATION,)
    # valence/arousal only: the default rule falls back to its valence/arousal form
    va_only = LoudnessModel()
    assert fit_rules_to_model([CUSTOMER_FRUSTRATION], va_only) == (CUSTOMER_FRUSTRATION_VA,)
    # a rule of the user's that could never fire is refused, naming what the model gives
    anger = AlertRule("anger", (("classes.angry", ">", 0.5),))
    with pytest.raises(ValueError) as err:
        fit_rules_to_model([anger], va_only)
    assert str(err.value) == (
        "alert rule 'anger' compares classes.angry, which model loudness does not output "
        "(its classes: none; valence/arousal: yes)"
    )
    # a misspelled label is caught the same way, against the labels the model really has
    typo = AlertRule("typo", (("classes_smooth.angyr", ">", 0.5),))
    with pytest.raises(ValueError, match=r"compares classes_smooth.angyr, .* angry, calm, "):
        fit_rules_to_model([typo], real_model)
    # a published model's own labels can be compared
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[[alerts]]\nname = "neg"\nconditions = { classes_smooth.negative = [">", 0.7] }\n'
    )
    assert load_alert_rules(path) == (AlertRule("neg", (("classes_smooth.negative", ">", 0.7),)),)
    # a model with neither output keeps no default rule (it would never fire)
    nothing = LoudnessModel()
    nothing.has_valence_arousal = False
    assert fit_rules_to_model([CUSTOMER_FRUSTRATION], nothing) == ()


def test_webhook_survives_a_receiver_that_does_not_answer_http():
    """A receiver answering garbage counts as a failed try; the sender thread lives on."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    answers = [b"garbage\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"]

    def serve():
        for answer in answers:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        sender = WebhookSender(url, retries=1, backoff=0.01)
        sender.send({"type": "alert", "name": "x"})
        sender.close(timeout=TIMEOUT)
    finally:
        listener.close()
    assert sender.stats == {"sent": 1, "failed": 0, "dropped": 0, "attempts": 2}
