"""The seeded fuzzer of bench/fuzz.py on 2,000 inputs across /ws, /ingest, /twilio, /audiohook,
AudioSocket and the HTTP routes, beside a real-time client streaming real speech on /ingest."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.settings import Settings

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"


def load_fuzzer():
    # By name from bench/ on sys.path: the fuzzer's client process (spawned) imports it too.
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    return importlib.import_module("fuzz")


async def test_2000_fuzz_inputs_hurt_nobody(tiny_model):
    fuzz = load_fuzzer()
    speech = load_clip(ravdess_clip("angry"))
    settings = Settings(host="127.0.0.1", port=0)  # VAD on, as served
    report = await fuzz.run(tiny_model, speech, settings, inputs=2000, seed=18)
    assert report.problems() == []
    assert sum(report.inputs.values()) >= 2000
    assert set(report.inputs) == set(fuzz.ROUTES)  # every route was fuzzed
    assert report.server_stats["protocol_errors"] > 100  # and refused what it had to
    good = report.good
    assert good["events"] == good["expected"] >= 1 and good["seq_ok"] and good["t0_ok"]
    assert report.health_asked >= 1
