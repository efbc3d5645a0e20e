"""`emotion-monitor run` and `devices` as real subprocesses: stdin, files, signals, errors, demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from audio_fixtures import SR, PulseServer, dialogue_16k, espeak, ravdess_16k, to_pcm, write_wav

TESTS = Path(__file__).resolve().parent
MODEL = "default"  # the shipped model, as a user runs it
ENV = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1"}
CMD = [sys.executable, "-m", "emotion_monitor.streamer.cli"]


def run(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 60):
    return subprocess.run(
        [*CMD, *args], input=input, capture_output=True, env=env or ENV, timeout=timeout
    )


def read_jsonl(path: Path) -> list[dict]:
    """Every line must be a complete JSON object (a torn last line fails here)."""
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the last JSON line is incomplete"
    return [json.loads(line) for line in text.splitlines()]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until ``path`` holds ``n`` complete lines (fails if the child exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        if path.exists():
            complete = path.read_text().count("\n")
            if complete >= n:
                return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"fewer than {n} events in {path} after {timeout} s")


def wait_until_read(pipe, timeout: float) -> None:
    """Wait until the child has read every byte written into ``pipe`` (Linux FIONREAD)."""
    import fcntl
    import termios

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
        if int.from_bytes(left, sys.byteorder) == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"the child did not read its stdin within {timeout} s")


def wait_for(path: Path, predicate, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until a complete JSON line of ``path`` satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        text = path.read_text() if path.exists() else ""
        complete = text[: text.rfind("\n") + 1]  # the child may be mid-way through a line
        if any(predicate(json.loads(line)) for line in complete.splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no matching line in {path} after {timeout} s")


def test_stdin_pcm_to_jsonl_and_readable_lines(tmp_path):
    audio = np.concatenate([ravdess_16k("angry"), np.zeros(2 * SR, np.float32)])
    out = tmp_path / "ev.jsonl"
    proc = run("run", "--source", "stdin", "--model", MODEL, "--out", str(out), input=to_pcm(audio))
    assert proc.returncode == 0, proc.stderr.decode()
    events = read_jsonl(out)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["type"] == "event" and e["v"] == 1 and e["stream"] == "stdin" for e in events)
    assert events[0]["speech"] and not events[-1]["speech"]  # the clip, then its silence
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(events)
    first = lines[0]
    assert "speech" in first and events[0]["label"] in first and " ms" in first
    assert events[0]["quadrant"] in first
    assert "silence" in lines[-1]
    assert f"{len(events)} events" in proc.stderr.decode()


def test_stdin_stereo_48k_f32_with_nan(tmp_path):
    from scipy.signal import resample_poly

    speech = resample_poly(ravdess_16k("happy"), 3, 1).astype(np.float32)
    speech[100:150] = np.nan
    pcm = to_pcm(np.stack([speech, speech], 1), "f32le")
    proc = run(
        "run",
        "--source",
        "stdin",
        "--rate",
        "48000",
        "--channels",
        "2",
        "--format",
        "f32le",
        "--model",
        MODEL,
        "--quiet",
        input=pcm,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert " 100 NaN/Inf samples replaced by silence" in err  # 50 stereo frames


def test_file_fast_with_duration_and_progress(tmp_path):
    path = write_wav(tmp_path / "dialogue.flac", dialogue_16k() * 0.5, subtype="PCM_16")
    out = tmp_path / "ev.jsonl"
    proc = run(
        "run",
        "--source",
        f"file:{path}",
        "--fast",
        "--duration",
        "4",
        "--window",
        "1",
        "--hop",
        "0.25",
        "--model",
        MODEL,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    events = read_jsonl(out)
    assert events and max(e["t1"] for e in events) <= 4.0 + 1e-6
    assert events[1]["t0"] - events[0]["t0"] == pytest.approx(0.25)
    assert all(e["stream"] == "dialogue.flac" for e in events)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_engine_and_leaves_complete_jsonl(tmp_path, sig):
    """A live stdin stream stopped mid-way: the tail window is analysed, the JSONL is whole."""
    out = tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        [*CMD, "run", "--source", "stdin", "--model", MODEL, "--out", str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    audio = dialogue_16k()[: int(3.3 * SR)]
    proc.stdin.write(to_pcm(audio))
    proc.stdin.flush()  # the pipe stays open: the process cannot know the stream ended
    wait_for_lines(out, 3, proc, timeout=30)
    wait_until_read(proc.stdin, timeout=10)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    events = read_jsonl(out)
    # Windows of 2 s every 0.5 s over 3.3 s: starts 0, 0.5, 1.0 and a flushed tail ending at 3.3.
    assert [e["t0"] for e in events[:3]] == [0.0, 0.5, 1.0]
    assert events[-1]["t1"] == pytest.approx(3.3, abs=1e-3)
    assert "stopped; engine flushed" in err.decode()
    proc.stdin.close()


def test_sigterm_during_realtime_file(tmp_path):
    path = write_wav(tmp_path / "long.wav", np.tile(dialogue_16k(), 3))
    out = tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        [
            *CMD,
            "run",
            "--source",
            f"file:{path}",
            "--realtime",
            "--model",
            MODEL,
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    wait_for_lines(out, 2, proc, timeout=30)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and time.monotonic() - t0 < 10, err.decode()
    assert b"stopped; engine flushed" in err
    events = read_jsonl(out)
    assert len(events) >= 2 and events[-1]["t1"] < 20  # stopped long before the end (32 s)
    assert [e["seq"] for e in events] == list(range(len(events)))


def test_bad_inputs_fail_clearly(tmp_path):
    missing = run("run", "--source", f"file:{tmp_path / 'gone.wav'}", "--model", MODEL)
    assert missing.returncode == 2 and b"gone.wav: no such file" in missing.stderr

    junk = tmp_path / "junk.mp3"
    junk.write_bytes(os.urandom(3000))
    undecodable = run("run", "--source", f"file:{junk}", "--model", MODEL)
    assert undecodable.returncode == 2 and b"junk.mp3: cannot decode" in undecodable.stderr

    bad_format = run("run", "--source", "stdin", "--format", "s24le", input=b"")
    assert bad_format.returncode == 2 and b"invalid choice" in bad_format.stderr

    torn = run("run", "--source", "stdin", "--model", MODEL, input=bytes(32001))
    assert torn.returncode == 2 and b"not make a whole s16le frame" in torn.stderr

    unknown = run("run", "--source", "tape", "--model", MODEL)
    assert unknown.returncode == 2 and b"unknown source 'tape'" in unknown.stderr

    no_mic = run(
        "run",
        "--source",
        "mic",
        "--device",
        "no-such-microphone",
        "--model",
        MODEL,
        env={**ENV, "PULSE_SERVER": "unix:/nonexistent"},
    )
    assert no_mic.returncode == 2 and b"no-such-microphone" in no_mic.stderr

    no_dir = run("run", "--source", "stdin", "--out", str(tmp_path / "no" / "ev.jsonl"), input=b"")
    assert no_dir.returncode == 2 and b"cannot write" in no_dir.stderr

    bad_model = run("run", "--source", "stdin", "--model", "hf:/nonexistent/model", input=b"")
    assert bad_model.returncode == 1 and b"cannot load model" in bad_model.stderr


def test_flags_that_cannot_work_are_refused_before_any_audio(tmp_path):
    """Refused at once (exit 2, one line), before the model loads or any input is read."""
    pcm = bytes(64_000)  # at --rate 1 this was 32000 s of audio: the run seemed to hang
    for rate in ("1", "100", "200000"):
        proc = run("run", "--source", "stdin", "--rate", rate, "--model", MODEL, input=pcm)
        assert proc.returncode == 2, proc.stderr.decode()
        assert proc.stderr.decode().strip() == (
            f"error: stdin: sample rate {rate} Hz is outside 8000..192000 Hz"
        )

    # 9 channels is over the protocol's MAX_CHANNELS (8), as /ingest refuses it
    proc = run("run", "--source", "stdin", "--channels", "9", "--model", MODEL, input=pcm)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().strip() == "error: stdin: channel count 9 is outside 1..8"

    for duration in ("0", "-2", "nan", "inf"):
        proc = run("run", "--source", "stdin", "--duration", duration, "--model", MODEL, input=pcm)
        assert proc.returncode == 2 and proc.stdout == b""
        assert b"--duration must be a positive finite number of seconds" in proc.stderr

    path = write_wav(tmp_path / "talk.wav", ravdess_16k("calm"))
    proc = run("run", "--source", f"file:{path}", "--rate", "8000", "--model", MODEL)
    assert proc.returncode == 2 and proc.stdout == b""
    assert b"--rate only applies to --source stdin" in proc.stderr
    proc = run("run", "--source", str(path), "--channels", "2", "--format", "f32le")
    assert proc.returncode == 2
    assert b"--channels, --format only apply to --source stdin" in proc.stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_demo_fast_plays_once_unclipped(tmp_path):
    """`--fast` analyses the demo dialogue once, says so, and the demo's loud lines do not clip."""
    out = tmp_path / "ev.jsonl"
    proc = run("run", "--source", "demo", "--fast", "--quiet", "--out", str(out), timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "once, as fast as possible" in err and "in real time" not in err
    events = read_jsonl(out)
    assert events and not any(e["clipped"] for e in events)
    assert ", 0 clipped windows," in err
    # once: the events end with the dialogue (about 25 s), they do not loop on
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert 15 < events[-1]["t1"] < 40


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_no_source_and_no_device_plays_the_demo(tmp_path):
    env = {**ENV, "PULSE_SERVER": "unix:/nonexistent"}  # hide any sound server from PortAudio
    listed = run("devices", "--json", env=env)
    if json.loads(listed.stdout or b"[]"):
        pytest.skip("this machine has a real input device; the fallback cannot be observed")
    out = tmp_path / "ev.jsonl"
    proc = run("run", "--duration", "3", "--model", MODEL, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"DEMO" in proc.stderr
    events = read_jsonl(out)
    assert events and all(e["stream"] == "demo" for e in events)
    assert any(e["speech"] for e in events)


@pytest.mark.skipif(shutil.which("pulseaudio") is None, reason="needs pulseaudio")
def test_devices_and_mic_run_through_the_cli(tmp_path):
    """`devices` lists the virtual microphone; `run --source mic` records speech played into it."""
    with PulseServer(tmp_path / "pulse") as pulse:
        env = {**ENV, "PULSE_SERVER": pulse.server}
        listed = run("devices", env=env)
        assert listed.returncode == 0, listed.stderr.decode()
        if b"pulse" not in listed.stdout:
            pytest.skip("PortAudio has no 'pulse' device (Debian: libasound2-plugins)")
        assert any(ln.startswith(b"*") for ln in listed.stdout.splitlines())

        out = tmp_path / "ev.jsonl"
        cmd = [*CMD, *"run --source mic --device pulse --model".split(), MODEL, "--out", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            wait_for_lines(out, 1, proc, timeout=30)  # recording: the null sink's silence
            player = pulse.play(espeak("Can you hear me? I am speaking into the microphone now."))
            assert player.wait(timeout=30) == 0
            wait_for(out, lambda e: e["type"] == "event" and e["speech"], proc, timeout=10)
            pulse.kill()  # the microphone vanishes: reported in the JSONL, the run goes on
            wait_for(out, lambda e: e["type"] == "source_error", proc, timeout=15)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
        assert b"[source error] mic:" in err
        records = read_jsonl(out)
        events = [e for e in records if e["type"] == "event"]
        assert not events[0]["speech"] and any(e["speech"] for e in events)
        assert all(e["stream"] == "mic" for e in events)

    assert run("devices", env={**ENV, "PULSE_SERVER": "unix:/nonexistent"}).returncode == 0
