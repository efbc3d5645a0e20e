"""The inference tier on Ray Serve, on a real local Ray instance (``ray.init(num_cpus=2)``, shut
down at the end): the same audio in-process and through 2 replicas gives the same events; a
replica killed mid-stream costs no event; the whole tier gone is reported as a ``source_error``
of the stream ``inference`` while the call stays open, and analysis resumes when it is back; the
Serve config and the front ends' ``--inference`` flag.

The replicas load a tiny random wav2vec2 classifier through the real loading code (fast on two
shared cores); the default model through Ray was checked by hand (see docs/scaling.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import ray
import yaml
from audio_fixtures import dialogue_16k, write_wav
from emotion_monitor.models import load_model
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.ray_client import RayModel
from emotion_monitor.models.ray_serve import app_name, build_app, serve_config
from emotion_monitor.streamer.commands.options import INFERENCE_STREAM, report_outages
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.metrics import inference_lines
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from ray import serve
from ray.serve.schema import ServeDeploySchema

CLI = [sys.executable, "-m", "emotion_monitor.streamer.cli"]
CHUNK = 4000  # 250 ms of audio per push, like a live source
BURST = 48_000  # one push of 3 s: six windows in flight at once, spread over both replicas
#: Replicas wait this long to fill a batch: long enough to kill one while windows wait in it.
BATCH_WAIT_S = 0.3


def _deploy(spec: str, replicas: int = 2) -> None:
    args = {"model": spec, "replicas": replicas, "cpus_per_replica": 1.0}
    app = build_app({**args, "batch_wait_s": BATCH_WAIT_S})
    serve.run(app, name=app_name(spec), route_prefix=None)


@pytest.fixture(scope="module")
def tier(tiny_checkpoints):
    """A local Ray instance serving the tiny classifier on 2 replicas; yields its spec."""
    spec = str(tiny_checkpoints["classifier"])
    # a small object store: windows are 128 KB, and CI machines may have a small /dev/shm
    ray.init(  # "local": a new instance even where another one runs (never join it)
        address="local",
        num_cpus=2,
        object_store_memory=256 << 20,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        serve.start(proxy_location="Disabled")
        _deploy(spec)
        yield spec
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """Calm speech, a pause, agitated speech, then silence: speech and silence windows both."""
    return np.concatenate([dialogue_16k(), np.zeros(48_000, np.float32)])


@pytest.fixture(scope="module")
def local_events(tier, audio):
    return _events(load_model(tier, device="cpu"), audio)


def _events(model, audio: np.ndarray, during=None) -> list:
    """Stream ``audio`` through an engine in live-sized chunks, but one burst at a third of it,
    just before which ``during()`` runs (the events do not depend on the chunking)."""
    engine = Engine(model, Settings())
    out = []
    i = 0
    while i < len(audio):
        size = CHUNK
        if during is not None and i >= len(audio) // 3:
            during()
            during, size = None, BURST
        out += engine.push("call", audio[i : i + size])
        i += size
    return out + engine.flush()


def _assert_same(remote: list, local: list) -> None:
    """Same windows, seq and speech flags; probabilities within 1e-4."""
    assert [(e.seq, e.t0, e.t1, e.speech) for e in remote] == [
        (e.seq, e.t0, e.t1, e.speech) for e in local
    ]
    assert any(e.speech for e in local) and not all(e.speech for e in local)
    for r, ev in zip(remote, local, strict=True):
        for field in ("classes", "classes_smooth"):
            a, b = getattr(r, field), getattr(ev, field)
            assert (a is None) == (b is None), (ev.seq, field)
            if b is not None:
                assert a.keys() == b.keys()
                assert max(abs(a[k] - b[k]) for k in b) <= 1e-4, (ev.seq, field, a, b)


def _replicas() -> list[str]:
    """Names of the live Serve replica actors."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith("SERVE_REPLICA"))


def test_events_through_two_replicas_equal_in_process(tier, audio, local_events):
    assert len(_replicas()) == 2
    model = RayModel.connect_app(tier)
    local = load_model(tier, device="cpu").describe()
    assert model.describe() == {
        **local,
        "device": f"ray:{local['device']}",
        "inference": f"ray serve application {app_name(tier)}",
    }
    _assert_same(_events(model, audio), local_events)
    assert model.tier_stats["failures"] == 0
    assert model.tier_stats["requests"] == sum(e.speech for e in local_events)


def test_bad_window_is_that_callers_error_only(tier):
    model = RayModel.connect_app(tier)
    with pytest.raises(Exception, match="1-D float32"):
        model.handle.predict.remote(np.zeros((2, 8000), np.float64)).result(timeout_s=60)
    # a window the model itself cannot take: the caller's ModelError at once, never re-sent
    with pytest.raises(ModelError, match=f"inference tier {app_name(tier)}: .*[Kk]ernel size"):
        model.predict([np.zeros(10, np.float32)])
    assert model.tier_stats["failures"] == 0 and model.tier_stats["requests"] == 1
    # the replicas still serve everyone else
    assert len(model.predict([np.zeros(16000, np.float32)])) == 1


def test_killed_replica_costs_no_event(tier, audio, local_events):
    model = RayModel.connect_app(tier, retry_s=120)
    before = _replicas()
    killed = []

    def kill_one() -> None:
        killed.append(before[0])
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)

    def kill_during_burst() -> None:
        """Kill once the burst's windows are sent, while they wait in the replicas' batches
        (not on a timer: on a loaded machine a timer fired before the burst or after it)."""
        sent = model.tier_stats["requests"]

        def watch() -> None:
            deadline = time.monotonic() + 60
            while model.tier_stats["requests"] < sent + 6 and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(BATCH_WAIT_S / 6)  # the requests reach the replicas
            kill_one()

        threading.Thread(target=watch, daemon=True).start()

    _assert_same(_events(model, audio, during=kill_during_burst), local_events)
    # windows were lost with the replica and sent again, and no event was missing
    assert killed and model.tier_stats["failures"] >= 1
    assert model.tier_stats["retries"] == model.tier_stats["failures"]
    deadline = time.monotonic() + 120  # Serve replaces the replica
    while (before[0] in _replicas() or len(_replicas()) < 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert before[0] not in _replicas() and len(_replicas()) == 2
    text = "\n".join(inference_lines(model.tier_stats))
    assert "emotion_monitor_inference_tier_up 1" in text
    assert f"emotion_monitor_inference_requests_total {model.tier_stats['requests']}" in text


def test_tier_gone_then_back_keeps_the_call_open(tier, audio, local_events):
    model = RayModel.connect_app(tier, retry_s=2.0, retry_every_s=0.5)
    service = MonitorService(Engine(model, Settings())).start()
    report_outages(model, lambda err: service.publish([err.to_dict()]))
    seen: list[dict] = []
    arrived = threading.Condition()

    def listener(messages: list[dict]) -> None:
        with arrived:
            seen.extend(messages)
            arrived.notify_all()

    def wait_for(what, timeout: float = 120) -> None:
        with arrived:
            assert arrived.wait_for(lambda: any(what(m) for m in seen), timeout), seen[-3:]

    service.add_listener(listener)
    try:
        service.open_stream("call")
        third = len(audio) // 3
        service.push("call", audio[:third])
        wait_for(lambda m: m["type"] == "event")
        serve.delete(app_name(tier))
        service.push("call", audio[third:])  # the call goes on while the tier is gone
        wait_for(lambda m: m["type"] == "source_error")
        outage = next(m for m in seen if m["type"] == "source_error")
        assert outage["stream"] == INFERENCE_STREAM and app_name(tier) in outage["message"]
        assert model.tier_stats["tier_up"] == 0 and "call" in service.streams
        _deploy(tier)
        service.end_stream("call")
        wait_for(lambda m: m["type"] == "stream_ended", timeout=180)
    finally:
        service.stop()
        if app_name(tier) not in serve.status().applications:
            _deploy(tier)  # the next tests need the tier
    events = [m for m in seen if m["type"] == "event"]
    assert model.tier_stats["tier_up"] == 1 and model.tier_stats["outages"] == 1
    assert [e["seq"] for e in events] == [e.seq for e in local_events]
    assert [e["speech"] for e in events] == [e.speech for e in local_events]
    for got, ev in zip(events, local_events, strict=True):
        if ev.classes is not None:
            assert max(abs(got["classes"][k] - ev.classes[k]) for k in ev.classes) <= 1e-4


def test_analyze_with_inference_ray_matches_in_process(tier, audio, tmp_path):
    wav = write_wav(tmp_path / "dialogue.wav", audio)
    address = ray.get_runtime_context().gcs_address

    def analyze(*extra: str) -> dict:
        out = subprocess.run(
            [*CLI, "analyze", str(wav), "--model", tier, "--json", "-", *extra],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    remote, local = analyze("--inference", f"ray:{address}"), analyze()
    assert remote["model"]["inference"] == f"ray serve application {app_name(tier)}"
    assert [(w["t0"], w["speech"]) for w in remote["timeline"]] == [
        (w["t0"], w["speech"]) for w in local["timeline"]
    ]
    for r, lo in zip(remote["timeline"], local["timeline"], strict=True):
        for k, v in (lo.get("classes") or {}).items():
            assert abs(r["classes"][k] - v) <= 1e-4


def test_serve_config_is_valid_and_builds(tier, tmp_path):
    path = tmp_path / "serve.yaml"
    cmd = [*CLI, "ray-serve", "--model", tier, "--autoscale", "1:4", "--gpus-per-replica", "0.25"]
    out = subprocess.run([*cmd, "--write-config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(path.read_text())
    assert config == serve_config(tier, autoscale=(1, 4), gpus_per_replica=0.25)
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.name == app_name(tier)
    deployment = application.deployments[0]
    assert deployment.autoscaling_config == {"min_replicas": 1, "max_replicas": 4}
    assert deployment.ray_actor_options.num_gpus == 0.25


def test_bad_flags_fail_clearly(tier):
    bad = [
        (["ray-serve", "--autoscale", "4"], "MIN:MAX"),
        (["ray-serve", "--autoscale", "3:1"], "MIN <= MAX"),
        (["ray-serve", "--replicas", "0"], "replicas must be >= 1"),
        (["analyze", "x.wav", "--inference", "rayy"], "use local, ray or ray:ADDRESS"),
    ]
    for argv, message in bad:
        out = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr, (argv, out.stderr)


def test_ray_serve_command_deploys_until_sigterm(tier, tiny_checkpoints):
    """The command on the running cluster: a second model (a valence/arousal regressor) as its
    own application, up until SIGTERM, then deleted; front ends reach it meanwhile."""
    spec = str(tiny_checkpoints["regressor"])
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [*CLI, "ray-serve", "--address", address, "--model", spec, "--cpus-per-replica", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once the application is ready
        assert f"application {app_name(spec)} on {address}" in line, proc.stderr.read()
        model = RayModel.connect_app(spec)
        (prediction,) = model.predict([dialogue_16k()[:32000]])
        expected = load_model(spec, device="cpu").predict([dialogue_16k()[:32000]])[0]
        assert model.has_valence_arousal and prediction.classes is None
        assert abs(prediction.valence - expected.valence) <= 1e-4
        assert abs(prediction.arousal - expected.arousal) <= 1e-4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert app_name(spec) not in serve.status().applications
    assert app_name(tier) in serve.status().applications  # the other application is untouched


def test_serve_front_end_on_the_tier_events_and_metrics(tier, audio, tmp_path):
    """``serve --inference ray:ADDRESS`` as a user runs it: a file played live through the tier,
    the events on /ws equal in-process ones, /metrics counts the tier's requests."""
    from test_server_cli import start_serve
    from websockets.sync.client import connect as ws_connect

    clip = audio[: 5 * 16_000]
    wav = write_wav(tmp_path / "call.wav", clip)
    local = {e.seq: e for e in _events(load_model(tier, device="cpu"), clip)}
    address = ray.get_runtime_context().gcs_address
    proc, url = start_serve(
        "--source", f"file:{wav}", "--model", tier, "--inference", f"ray:{address}"
    )
    try:
        events = []
        with ws_connect(url.replace("http://", "ws://") + "ws", open_timeout=120) as ws:
            while (msg := json.loads(ws.recv(timeout=120)))["type"] != "stream_ended":
                events += [msg] if msg["type"] == "event" else []
        assert events and {e["seq"] for e in events} <= set(local)
        for got in events:
            ev = local[got["seq"]]
            assert (got["t0"], got["speech"]) == (ev.t0, ev.speech)
            for k, v in (ev.classes or {}).items():
                assert abs(got["classes"][k] - v) <= 1e-4
        with urllib.request.urlopen(url + "metrics", timeout=60) as r:
            metrics = r.read().decode()
        speech = sum(e.speech for e in local.values())
        assert f"emotion_monitor_inference_requests_total {speech}\n" in metrics
        assert "emotion_monitor_inference_tier_up 1\n" in metrics
        assert "emotion_monitor_inference_failures_total 0\n" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_two_front_ends_share_batches(tier, tiny_checkpoints, audio):
    """Windows of two front ends (two handles, sending at once) meet in one replica's batch."""
    spec = str(tiny_checkpoints["classifier"]) + "/"  # same model, its own one-replica app
    build = {"model": spec, "replicas": 1, "cpus_per_replica": 0.0, "max_batch": 32}
    serve.run(build_app({**build, "batch_wait_s": 0.5}), name=app_name(spec), route_prefix=None)
    try:
        windows = [audio[i * 8000 : i * 8000 + 32000] for i in range(8)]
        front_ends = [RayModel.connect_app(spec), RayModel.connect_app(spec)]
        answers: list = [None, None]
        start = threading.Barrier(2)

        def send(i: int) -> None:
            start.wait()
            answers[i] = front_ends[i].predict(windows)

        threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = front_ends[0].handle.batch_stats.remote().result(timeout_s=60)
        assert stats["windows"] == 16 and stats["largest_batch"] > len(windows), stats
        local = load_model(tier, device="cpu").predict(windows)
        for got in answers:
            for g, lo in zip(got, local, strict=True):
                assert max(abs(g.classes[k] - lo.classes[k]) for k in lo.classes) <= 1e-4
    finally:
        serve.delete(app_name(spec))
