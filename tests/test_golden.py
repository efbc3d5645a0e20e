"""Behaviour pinned across refactors: the default model over fixed speech, through `run --fast`
and through a real `serve` process (/ingest in, /ws out), gives the stored events (rounded).

Regenerate the golden files only for a deliberate behaviour change:
``EMOTION_MONITOR_UPDATE_GOLDEN=1 ./test.sh -k golden``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from audio_fixtures import SR, ravdess_16k, to_pcm, write_wav
from websockets.asyncio.client import connect

GOLDEN = Path(__file__).resolve().parent / "golden"
CMD = [sys.executable, "-m", "emotion_monitor.streamer.cli"]
UPDATE = os.environ.get("EMOTION_MONITOR_UPDATE_GOLDEN") == "1"
# Fields that depend on the machine's timing, not on the audio.
VOLATILE = {"latency_ms"}


def fixed_speech() -> np.ndarray:
    """About 9 s: an angry, a sad and a happy RAVDESS test clip with a pause between."""
    gap = np.zeros(SR // 2, np.float32)
    parts = [ravdess_16k("angry"), gap, ravdess_16k("sad"), gap, ravdess_16k("happy")]
    return np.concatenate(parts).astype(np.float32)


def rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def check_golden(name: str, events: list[dict]) -> None:
    events = [rounded(e) for e in events if e.get("type", "event") == "event"]
    path = GOLDEN / f"{name}.json"
    if UPDATE or not path.exists():
        path.write_text(json.dumps(events, indent=0, sort_keys=True) + "\n")
        if not UPDATE:
            pytest.fail(f"{path} did not exist; written now, commit it")
    expected = json.loads(path.read_text())
    assert len(events) == len(expected)
    for got, want in zip(events, expected, strict=True):
        assert set(got) == set(want)
        for key, value in want.items():
            assert_close(got[key], value, f"seq {want['seq']} {key}")


def assert_close(got, want, where: str) -> None:
    # int8 encoders on another CPU may differ in the last bits: a small tolerance, no more.
    if isinstance(want, float) and isinstance(got, int | float):
        assert abs(got - want) <= 0.011, (where, got, want)
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    else:
        assert got == want, (where, got, want)


def test_run_fast_events_unchanged(tmp_path):
    wav = write_wav(tmp_path / "speech.wav", fixed_speech())
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [*CMD, "run", "--source", f"file:{wav}", "--fast", "--out", str(out)],
        capture_output=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) > 10
    check_golden("run_fast", events)


async def test_serve_events_unchanged():
    proc = subprocess.Popen(
        [*CMD, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = await asyncio.wait_for(asyncio.to_thread(_read_port, proc), 120)
        events = await asyncio.wait_for(_stream_through(port, fixed_speech()), 120)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(events) > 10
    check_golden("serve_ingest", events)


def _read_port(proc: subprocess.Popen) -> int:
    for line in proc.stdout:
        found = re.search(rb"http://[^:]+:(\d+)/", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"serve printed no URL: {proc.stderr.read().decode()}")


async def _stream_through(port: int, audio: np.ndarray) -> list[dict]:
    async with connect(f"ws://127.0.0.1:{port}/ws") as watcher:
        hello = json.loads(await watcher.recv())
        assert hello["type"] == "hello"
        async with connect(f"ws://127.0.0.1:{port}/ingest") as ingest:
            start = {"type": "start", "v": 1, "stream": "golden", "sample_rate": SR}
            start |= {"format": "s16le", "channels": 1}
            await ingest.send(json.dumps(start))
            pcm = to_pcm(audio)
            step = SR // 50 * 2  # 20 ms frames
            for i in range(0, len(pcm), step):
                await ingest.send(pcm[i : i + step])
            await ingest.send(json.dumps({"type": "stop"}))
            events = []
            while True:
                message = json.loads(await watcher.recv())
                if message["type"] == "event" and message["stream"] == "golden":
                    events.append(message)
                if message["type"] == "stream_ended" and message.get("stream") == "golden":
                    return events
