"""The streaming core on real speech with the shipped default model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer.engine import Engine, StreamLimitError
from emotion_monitor.streamer.protocol import Event
from emotion_monitor.streamer.quadrant import NEUTRAL_RADIUS, QUADRANTS, SECTORS, quadrant
from emotion_monitor.streamer.settings import Settings


def speech_with_pause() -> np.ndarray:
    """Two real utterances (angry, then sad) with 1.5 s of silence between them."""
    angry = load_clip(ravdess_clip("angry"))
    sad = load_clip(ravdess_clip("sad"))
    return np.concatenate([angry, np.zeros(24_000, np.float32), sad])


def run_chunked(model, audio: np.ndarray, chunk_sizes, settings=None, stream="s") -> list[Event]:
    engine = Engine(model, settings or Settings())
    events, i = [], 0
    for n in chunk_sizes:
        if i >= len(audio):
            break
        events += engine.push(stream, audio[i : i + n])
        i += n
    if i < len(audio):
        events += engine.push(stream, audio[i:])
    return events + engine.flush(stream)


def comparable(event: Event) -> dict:
    """Event fields that must not depend on timing or chunking (latency excluded)."""
    d = event.to_dict()
    d.pop("latency_ms")
    return d


def assert_events_close(a: list[Event], b: list[Event], tol: float = 1e-4) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        dx, dy = comparable(x), comparable(y)
        for key, vx in dx.items():
            vy = dy[key]
            if isinstance(vx, float):
                assert vy == pytest.approx(vx, abs=tol), key
            elif isinstance(vx, dict):
                assert vx.keys() == vy.keys()
                for k in vx:
                    assert vy[k] == pytest.approx(vx[k], abs=tol), (key, k)
            else:
                assert vx == vy, key


def test_chunk_size_invariance(default_model):
    audio = speech_with_pause()
    whole = run_chunked(default_model, audio, [len(audio)])
    rng = np.random.default_rng(7)
    random_chunks = run_chunked(default_model, audio, rng.integers(1, 4000, size=10_000))
    tiny_chunks = run_chunked(default_model, audio, [160] * 10_000)
    assert_events_close(whole, random_chunks)
    assert_events_close(whole, tiny_chunks)


def test_event_fields_and_sequence(default_model):
    audio = speech_with_pause()
    events = run_chunked(default_model, audio, [8000] * 1000)
    assert [e.seq for e in events] == list(range(len(events)))
    # windows every hop of stream time, plus one tail window ending at the end of the audio
    assert [e.t0 for e in events[:-1]] == [0.5 * i for i in range(len(events) - 1)]
    assert events[-1].t1 == pytest.approx(len(audio) / 16000)
    speech = [e for e in events if e.speech]
    assert speech, "real speech must open the gate"
    for e in speech:
        assert set(e.classes) == set(default_model.labels)
        assert sum(e.classes.values()) == pytest.approx(1.0, abs=1e-3)
        assert -1 <= e.valence <= 1 and -1 <= e.arousal <= 1
        assert e.label == max(e.classes, key=e.classes.get)
        assert e.confidence == pytest.approx(e.classes[e.label])
        assert e.quadrant in QUADRANTS
        assert e.quadrant == quadrant(e.valence_smooth, e.arousal_smooth)
        assert e.latency_ms >= 0
    silent = [e for e in events if not e.speech]
    assert silent, "the 1.5 s pause must produce a non-speech window"
    for e in silent:
        assert e.valence is None and e.arousal is None and e.classes is None and e.label is None


def test_silence_and_noise_give_no_speech(default_model):
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 4, np.float32)
    noise = (rng.standard_normal(16000 * 4) * 0.05).astype(np.float32)
    for audio in (silence, noise):
        events = run_chunked(default_model, audio, [4000] * 100)
        assert events and not any(e.speech for e in events)
        assert all(e.classes is None and e.valence is None for e in events)


def test_smoothing_follows_time_constant(default_model):
    audio = speech_with_pause()
    fast = run_chunked(default_model, audio, [len(audio)], Settings(vad=False, smoothing_tau=0))
    slow = run_chunked(default_model, audio, [len(audio)], Settings(vad=False, smoothing_tau=5))
    # tau = 0 means no smoothing at all; a long tau keeps the smoothed track inside the raw range
    for e in fast:
        assert e.valence_smooth == pytest.approx(e.valence)
    raw = [e.arousal for e in slow]
    smooth = [e.arousal_smooth for e in slow]
    assert np.std(np.diff(smooth)) < np.std(np.diff(raw))
    assert min(raw) - 1e-6 <= min(smooth) and max(smooth) <= max(raw) + 1e-6


def test_nonfinite_samples_are_counted_and_clipping_flagged(default_model):
    audio = load_clip(ravdess_clip("angry")).copy()
    audio[1000:1010] = np.nan
    audio[2000] = np.inf
    audio[20000:20100] = 1.0
    engine = Engine(default_model, Settings())
    events = engine.push("s", audio) + engine.flush("s")
    assert engine.stats["nonfinite_samples"] == 11
    assert all(np.isfinite([e.valence for e in events if e.speech]))
    assert any(e.clipped for e in events)
    assert engine.stats["clipped_windows"] >= 1


def test_streams_are_batched_kept_apart_and_freed(default_model):
    clips = {"a": load_clip(ravdess_clip("angry")), "b": load_clip(ravdess_clip("calm"))}
    engine = Engine(default_model, Settings(max_streams=2))
    batched: dict[str, list[Event]] = {"a": [], "b": []}
    for i in range(0, 40_000, 4000):
        for name, audio in clips.items():
            engine.feed(name, audio[i : i + 4000])
        for e in engine.step():
            batched[e.stream].append(e)
    with pytest.raises(StreamLimitError, match="maximum of 2 streams"):
        engine.feed("c", clips["a"])
    for e in engine.flush():
        batched[e.stream].append(e)
    assert engine.streams == []
    # every stream gives the same events alone as when batched with others
    for name, audio in clips.items():
        alone = run_chunked(default_model, audio, [len(audio)], stream=name)
        assert_events_close(alone, batched[name])


def test_settings_reject_impossible_windows():
    with pytest.raises(ValueError, match="hop"):
        Settings(window=1.0, hop=2.0)
    with pytest.raises(ValueError, match="window"):
        Settings(window=0)


def test_a_window_shorter_than_the_unchanged_hop_names_that_hop():
    """`--window 0.3` alone: the 0.5 s complained about is the default hop, and says so."""
    with pytest.raises(ValueError) as err:
        Settings().replace(window=0.3, hop=None)
    assert str(err.value) == (
        "hop (default 0.5 s) must be at most window (0.3 s); pass a hop too (--hop)"
    )
    with pytest.raises(ValueError) as err:  # a hop from a settings file is not "default"
        Settings(hop=1.0).replace(window=0.5)
    assert str(err.value).startswith("hop (1 s) must be at most window (0.5 s)")
    with pytest.raises(ValueError, match=r"^hop must be a number > 0 s and at most window"):
        Settings().replace(window=0.3, hop=0.4)  # both given: the plain message
    assert Settings().replace(window=0.3, hop=0.3).hop == 0.3


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("max_batch", 0, "an integer >= 1"),  # the engine loop never took a window: a hang
        ("max_pending_windows", 0, "an integer >= 1"),  # IndexError: pop from an empty deque
        ("window", "abc", "a number in 0.1..30 s"),  # TypeError at the first comparison
        ("window", float("nan"), "a number in 0.1..30 s"),
        ("port", 99999, "an integer in 0..65535"),  # OverflowError when serving
        ("audiosocket_port", -1, "an integer in 0..65535"),
        ("vad_threshold", 5, "a number between 0 and 1"),  # every window non-speech
        ("vad_min_speech_fraction", 0, "a number > 0 and <= 1"),
        ("max_streams", 2.5, "an integer >= 1"),
        ("client_queue", True, "an integer >= 1"),  # a bool is not a count
        ("ping_interval", 0, "a number > 0 s"),
        ("vad", "yes", "true or false"),
        ("host", 127001, "a string"),
        ("webhook_url", "ftp://x", "a string starting with http:// or https://"),
        ("alerts", ({"name": "x"},), "alert rules"),
        ("device", "gpuu", "a string (auto, cpu or cuda)"),  # what --device and the loaders take
    ],
)
def test_settings_refuse_every_bad_value_naming_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as err:
        Settings(**{field: value})
    assert str(err.value).startswith(f"{field} must be {allowed}")
    assert str(err.value).endswith(f", got {value!r}")


@pytest.mark.parametrize(
    "text,problem",
    [
        ("window = \n", r"^.*monitor\.toml: not valid TOML: Invalid value"),
        ("max_batch = 0\n", r"monitor\.toml: max_batch must be an integer >= 1"),
        ("windw = 1.0\n", r"monitor\.toml: unknown settings windw; valid: window,"),
        (
            "[[alerts]]\nname = 'x'\nconditions = { arousl_smooth = ['>', 0.4] }\n",
            r"monitor\.toml: alerts\[0\] .*'arousl_smooth'",
        ),
    ],
)
def test_settings_from_toml_name_the_file(tmp_path, text, problem):
    path = tmp_path / "monitor.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        Settings.from_toml(path)


def test_settings_from_toml_good_values_and_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing.toml: cannot read settings"):
        Settings.from_toml(tmp_path / "missing.toml")
    # Good values, integers where seconds are expected included, are taken as written.
    path = tmp_path / "monitor.toml"
    path.write_text(
        "window = 1\nhop = 0.25\nport = 0\nvad_threshold = 0.3\n[[alerts]]\nname = 'loud'\n"
        "conditions = { arousal_smooth = ['>', 0.5] }\n"
    )
    s = Settings.from_toml(path)
    assert (s.window, s.hop, s.port, s.vad_threshold) == (1, 0.25, 0, 0.3)
    assert [(r.name, r.conditions) for r in s.alerts] == [("loud", (("arousal_smooth", ">", 0.5),))]


def test_flags_win_over_the_settings_file(tmp_path):
    path = tmp_path / "monitor.toml"
    path.write_text("window = 2.0\nhop = 5.0\n")  # a bad hop, overridden on the command line
    with pytest.raises(ValueError, match=r"monitor\.toml: hop .* at most window"):
        Settings.from_toml(path)
    s = Settings.from_toml(path, hop=0.5, window=None)  # None: flag not given, the file's value
    assert (s.window, s.hop) == (2.0, 0.5)
    with pytest.raises(ValueError, match=r"monitor\.toml with the flags given: hop .* window"):
        Settings.from_toml(path, window=0.3, hop=0.5)


def test_quadrant_names_are_listed_in_sector_order():
    """SECTORS[i] is the sector from 45*i to 45*(i+1) degrees, as the dashboard draws them
    around a neutral disc of the same radius; QUADRANTS is every name quadrant() returns."""
    mids = [math.radians(22.5 + 45 * i) for i in range(8)]
    assert [quadrant(math.cos(a), math.sin(a)) for a in mids] == list(SECTORS)
    assert QUADRANTS == (*SECTORS, "NEUTRAL")
    app = Path(__file__).resolve().parents[1] / "web_dashboard" / "static" / "app.js"
    consts = {
        ln.split()[1]: json.loads(ln.split("=", 1)[1].strip().rstrip(";"))
        for ln in app.read_text().splitlines()
        if ln.startswith(("const SECTORS ", "const NEUTRAL_RADIUS "))
    }
    assert consts == {"SECTORS": list(SECTORS), "NEUTRAL_RADIUS": NEUTRAL_RADIUS}


def test_readme_event_example_is_consistent_with_the_code():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = json.loads(readme.split("```json\n", 1)[1].split("```", 1)[0])
    assert Event.from_dict(example).to_dict().keys() == example.keys()  # every field, no other
    assert example["quadrant"] == quadrant(example["valence_smooth"], example["arousal_smooth"])
    assert example["label"] == max(example["classes"], key=example["classes"].get)


def test_protocol_doc_event_examples_name_their_quadrant():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```json\n")[1:]]
    events = [json.loads(b) for b in blocks if b.startswith('{"type": "event"')]
    assert events
    for ev in events:
        assert ev["quadrant"] == quadrant(ev["valence_smooth"], ev["arousal_smooth"])


def test_quadrants_cover_the_plane():
    assert quadrant(0.8, 0.2) == "HAPPY"
    assert quadrant(0.3, 0.9) == "EXCITED"
    assert quadrant(-0.3, 0.9) == "TENSE"
    assert quadrant(-0.8, 0.3) == "ANGRY"
    assert quadrant(-0.8, -0.3) == "SAD"
    assert quadrant(-0.3, -0.9) == "BORED"
    assert quadrant(0.3, -0.9) == "CALM"
    assert quadrant(0.8, -0.3) == "CONTENT"
    assert quadrant(None, 0.1) is None


def test_quadrant_is_neutral_near_the_origin():
    assert NEUTRAL_RADIUS == 0.25
    assert quadrant(0.0, 0.0) == "NEUTRAL"
    assert quadrant(0.1, -0.15) == "NEUTRAL"
    assert quadrant(-0.17, 0.17) == "NEUTRAL"  # 0.240 from the origin
    assert quadrant(-0.2, 0.16) == "ANGRY"  # 0.256: just outside
    assert quadrant(0.2, -0.3) == "CALM"  # 0.36, where calm speech lies: not neutral
    # The circle itself belongs to the sectors: NEUTRAL is strictly inside it.
    assert quadrant(0.25, 0.0) == "HAPPY"
    assert quadrant(0.0, -0.25) == "CALM"
    assert quadrant(-0.15, -0.2) == "BORED"  # exactly 0.25 (a 3-4-5 triangle)
    assert quadrant(0.2499, 0.0) == "NEUTRAL"
    # None stays None, also where the other coordinate would be neutral.
    assert quadrant(0.0, None) is None
    assert quadrant(None, None) is None


def test_a_backlogged_track_takes_only_its_share_of_each_step(default_model):
    speech = speech_with_pause()
    backlog = np.concatenate([speech] * 3)  # about 22 s arriving at once
    live = speech[:40_000]  # 2.5 s: two windows
    engine = Engine(default_model, Settings(max_batch=8))  # a share of 4 windows per track
    engine.feed("backlog", backlog)
    engine.feed("live", live)
    first = engine.step()
    assert [e.stream for e in first].count("live") == 2  # not held back by the backlog
    assert [e.stream for e in first].count("backlog") == 4
    assert engine.behind and engine.backlog("backlog") > 16_000 * 15
    got = {"backlog": [], "live": []}
    for e in first:
        got[e.stream].append(e)
    while engine.behind:
        for e in engine.step():
            got[e.stream].append(e)
    for e in engine.flush():
        got[e.stream].append(e)
    # the same events as each stream analysed alone, none lost
    assert_events_close(
        run_chunked(default_model, backlog, [len(backlog)], stream="backlog"), got["backlog"]
    )
    assert_events_close(run_chunked(default_model, live, [len(live)], stream="live"), got["live"])


def test_skipped_audio_moves_stream_time_on_and_counts_the_lost_windows(default_model):
    speech = np.concatenate([speech_with_pause()] * 2)
    engine = Engine(default_model, Settings())
    engine.feed("s", speech[:48_000])  # 0..3 s
    assert engine.skip("s", "main", 32_000) == 48_000  # 3..5 s lost
    engine.feed("s", speech[80_000:128_000])  # 5..8 s
    events = engine.step() + engine.flush()
    assert [(e.t0, e.t1) for e in events] == [
        (0.0, 2.0),
        (0.5, 2.5),
        (1.0, 3.0),
        (5.0, 7.0),
        (5.5, 7.5),
        (6.0, 8.0),
    ]
    assert [e.seq for e in events] == list(range(6))
    assert engine.stats["windows_dropped"] == 7  # starts 1.5 .. 4.5 s
    assert any(e.speech for e in events[3:])  # the gate works after the gap
