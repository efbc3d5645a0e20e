"""`emotion-monitor serve` as a user runs it: a subprocess with a file source, then SIGTERM."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from conftest import load_clip, ravdess_clip
from websockets.sync.client import connect

TIMEOUT = 120  # generous: model imports on a loaded 2-core machine take a while


def start_serve(*args: str, stdin=None) -> tuple[subprocess.Popen, str]:
    """Start the server; returns the process and the dashboard URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(x.decode(errors="replace")) for x in proc.stdout], daemon=True
    ).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"no dashboard URL within {TIMEOUT} s: {seen}") from None
        seen.append(line)
        if "dashboard: http://" in line:
            return proc, line.split("dashboard: ", 1)[1].strip()
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {''.join(seen)}")


def test_serve_file_source_events_and_clean_shutdown(tiny_checkpoints, tmp_path):
    audio = np.concatenate([load_clip(ravdess_clip(e)) for e in ("angry", "sad", "happy")])
    wav = tmp_path / "talk.wav"
    sf.write(wav, audio, 16_000)
    proc, url = start_serve(
        "--source", f"file:{wav}", "--model", str(tiny_checkpoints["classifier"])
    )
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        ws_url = url.replace("http://", "ws://") + "ws"
        with connect(ws_url, open_timeout=TIMEOUT) as ws:
            hello = json.loads(ws.recv(timeout=TIMEOUT))
            assert hello["type"] == "hello" and hello["model"]["kind"] == "hf"
            # The stream's metadata, from hello when it had started, else from stream_started.
            meta = hello["streams"].get("talk.wav")
            events = []
            while True:
                msg = json.loads(ws.recv(timeout=TIMEOUT))
                if msg["type"] == "event":
                    events.append(msg)
                elif msg["type"] == "stream_started":
                    meta = msg["meta"]
                elif msg["type"] == "stream_ended":
                    assert msg["stream"] == "talk.wav"
                    break
        assert meta["source"] == "file:talk.wav"  # what the user passed, not "FileSource"
        # Played in real time: the client connected during playback and saw the windows up to
        # the tail, which ends with the file.
        assert events and {e["stream"] for e in events} == {"talk.wav"}
        assert abs(events[-1]["t1"] - len(audio) / 16_000) < 0.01
        with urllib.request.urlopen(url + "healthz", timeout=TIMEOUT) as r:
            assert json.loads(r.read())["streams"] == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0


def test_serve_stdin_source_48k_stereo(tiny_checkpoints):
    """Raw PCM piped into serve (48 kHz stereo s16le) becomes the ``stdin`` stream."""
    from emotion_monitor.streamer.audio import resample

    audio = np.concatenate([load_clip(ravdess_clip(e)) for e in ("angry", "sad")])
    pcm = (np.clip(resample(audio, 16_000, 48_000), -1, 1) * 32767).astype("<i2")
    stereo = np.repeat(pcm[:, None], 2, axis=1).tobytes()
    proc, url = start_serve(
        "--source", "stdin", "--rate", "48000", "--channels", "2",
        "--model", str(tiny_checkpoints["classifier"]),
        stdin=subprocess.PIPE,
    )  # fmt: skip
    try:
        with connect(url.replace("http://", "ws://") + "ws", open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "hello"
            proc.stdin.write(stereo)
            proc.stdin.close()  # end of input ends the stream; the server keeps serving
            events = []
            while (msg := json.loads(ws.recv(timeout=TIMEOUT)))["type"] != "stream_ended":
                if msg["type"] == "event":
                    events.append(msg)
        assert msg["stream"] == "stdin"
        assert events and abs(events[-1]["t1"] - len(audio) / 16_000) < 0.01
        with urllib.request.urlopen(url + "healthz", timeout=TIMEOUT) as r:
            assert json.loads(r.read())["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0


def test_serve_refuses_a_missing_file(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_monitor.streamer.cli",
            "serve",
            "--port",
            "0",
            "--source",
            f"file:{tmp_path / 'nope.wav'}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2
    assert "nope.wav" in proc.stderr


@pytest.mark.parametrize("listener", ["the dashboard and websockets", "the audiosocket listener"])
def test_serve_names_the_busy_port(tiny_checkpoints, listener):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = ["--port", str(port)]
        if "audiosocket" in listener:
            ports = ["--port", "0", "--audiosocket-port", str(port)]
        proc = subprocess.run(
            [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", *ports, "--model"]
            + [str(tiny_checkpoints["classifier"])],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 1
    assert f"cannot serve {listener} on 127.0.0.1:{port}: " in proc.stderr


def test_serve_refuses_bad_settings_and_stray_stdin_flags(tmp_path):
    """Refused before the model loads, exit 2, one line naming the problem."""
    config = tmp_path / "serve.toml"
    config.write_text("port = 99999\n")  # was an OverflowError traceback once serving
    cli = [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve"]
    for args, error in (
        (["--config", str(config)], f"error: {config}: port must be an integer in 0..65535"),
        (["--port", "70000"], "error: port must be an integer in 0..65535"),
        (["--rate", "8000"], "error: --rate only applies to --source stdin (raw PCM)"),
    ):
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 2 and proc.stderr.startswith(error), proc.stderr
        assert proc.stderr.count("\n") == 1


def test_serve_refuses_an_alert_rule_the_model_cannot_evaluate(tiny_checkpoints, tmp_path):
    """A rule on the angry probability with a valence/arousal-only model would never fire."""
    rules = tmp_path / "alerts.toml"
    rules.write_text(
        '[[alerts]]\nname = "anger"\nconditions = { classes_smooth.angry = [">", 0.4] }\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0"]
        + ["--model", str(tiny_checkpoints["regressor"]), "--alerts-config", str(rules)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: alert rule 'anger' compares classes_smooth.angry, which model " in proc.stderr
    assert "(its classes: none; valence/arousal: yes)" in proc.stderr


def test_serve_loads_the_model_on_the_configured_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tmp_path / "serve.toml"
    config.write_text('device = "cuda"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--config", str(config)]
        + ["--port", "0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    # the setting reaches the model loader (it used to be checked, then ignored)
    assert proc.returncode == 1
    assert "cannot load model" in proc.stderr and "cuda" in proc.stderr.lower()
