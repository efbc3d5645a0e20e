"""`serve --record` killed with SIGKILL mid-stream: the recording keeps every event up to about
one second before the kill (the recorder commits a batch every 0.25 s, in WAL mode)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import numpy as np
import soundfile as sf
from conftest import load_clip, ravdess_clip
from test_server_cli import TIMEOUT, start_serve
from websockets.sync.client import connect

LOSS_ALLOWED_S = 1.0


def test_kill_9_of_serve_record_loses_at_most_the_last_second(tiny_checkpoints, tmp_path):
    clips = [load_clip(ravdess_clip(e)) for e in ("angry", "sad", "happy", "neutral")]
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate(clips * 2), 16_000)  # about 20 s, played in real time
    db = tmp_path / "calls.sqlite"
    model = str(tiny_checkpoints["classifier"])
    proc, url = start_serve("--source", f"file:{wav}", "--model", model, "--record", str(db))
    received: list[tuple[float, tuple]] = []  # (when, (stream, track, seq)) seen on /ws
    try:
        with connect(url.replace("http://", "ws://") + "ws", open_timeout=TIMEOUT) as ws:
            while len(received) < 16:  # several seconds into the call
                msg = json.loads(ws.recv(timeout=TIMEOUT))
                if msg["type"] == "event":
                    key = (msg["stream"], msg["track"], msg["seq"])
                    received.append((time.monotonic(), key))
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
        assert proc.wait(TIMEOUT) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        recorded = set(con.execute("SELECT stream, track, seq FROM events"))
        streams = con.execute("SELECT stream, ended FROM streams").fetchall()
    assert streams == [("call.wav", None)]  # started, never ended: the process died
    due = [key for when, key in received if when <= killed_at - LOSS_ALLOWED_S]
    assert len(due) >= 10
    missing = [key for key in due if key not in recorded]
    assert not missing, f"{len(missing)} events older than {LOSS_ALLOWED_S} s were lost"
