"""``emotion-monitor analyze``, file streaming, and the POST /predict helpers."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import load_clip
from emotion_monitor.models import load_model
from emotion_monitor.streamer import cli
from emotion_monitor.streamer.analysis import predict_response, run_blocks
from emotion_monitor.streamer.decode import UploadError, decode_upload, iter_file_blocks
from emotion_monitor.streamer.quadrant import QUADRANTS
from emotion_monitor.streamer.settings import Settings
from published_fixtures import EXPECTED_LABELS, SPEECH_CLIP

#: The session fixtures ``published`` and ``speech`` live in published_fixtures.py.
pytest_plugins = ["published_fixtures"]

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _m4a_bytes(x: np.ndarray, tmp_path) -> bytes:
    wav = tmp_path / "in.wav"
    sf.write(str(wav), x, 16000)
    out = tmp_path / "clip.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-ar", "44100", str(out)],
        check=True,
    )
    return out.read_bytes()


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "ast", "vit-va", "pooled"])
def test_analyze_cli(kind, published, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    rc = cli.main(
        [
            "analyze",
            str(SPEECH_CLIP),
            "--model",
            str(published(kind)),
            "--window",
            "1",
            "--hop",
            "0.5",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    timeline, summary = report["timeline"], report["summary"]
    # 2.39 s, 1 s windows every 0.5 s: starts 0, 0.5, 1.0 plus the tail window ending at the end.
    dur = sf.info(str(SPEECH_CLIP)).frames / 16000
    assert [e["t0"] for e in timeline] == [0.0, 0.5, 1.0, pytest.approx(dur - 1, abs=1e-3)]
    assert timeline[-1]["t1"] == pytest.approx(dur, abs=1e-3)
    assert summary["speech_windows"] >= 2  # real speech passes the VAD gate
    assert 0 < summary["speech_s"] <= dur + 1e-3
    assert report["model"]["labels"] == list(EXPECTED_LABELS[kind])
    speech_events = [e for e in timeline if e["speech"]]
    if kind == "vit-va":
        assert -1 <= summary["mean_valence"] <= 1 and -1 <= summary["mean_arousal"] <= 1
        assert sum(summary["quadrant_s"].values()) == pytest.approx(summary["speech_s"])
        assert set(summary["quadrant_s"]) <= set(QUADRANTS)
        assert all(e["classes"] is None and e["quadrant"] for e in speech_events)
        # the text names quadrants as the protocol and `report` do: upper case (was "neutral")
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "per quadrant" in ln)
        assert line == "  time per quadrant: " + ", ".join(
            f"{q} {t:.1f} s" for q, t in summary["quadrant_s"].items()
        )
    else:
        assert summary["mean_valence"] is None and summary["quadrant_s"] == {}
        assert set(summary["label_distribution"]) <= set(EXPECTED_LABELS[kind])
        assert sum(summary["label_distribution"].values()) == pytest.approx(1.0, abs=1e-3)
        assert all(e["label"] in EXPECTED_LABELS[kind] for e in speech_events)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "ast", "vit-va", "pooled"])
def test_run_cli_with_each_published_format(kind, published, tmp_path):
    """`emotion-monitor run --model DIR` maps each format's outputs into the same events."""
    out = tmp_path / "events.jsonl"
    rc = cli.main(
        [
            "run",
            "--source",
            f"file:{SPEECH_CLIP}",
            "--fast",
            "--quiet",
            "--model",
            str(published(kind)),
            "--window",
            "1",
            "--hop",
            "0.5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events))) and len(events) == 4
    speech_events = [e for e in events if e["speech"]]
    assert speech_events
    for e in speech_events:
        if kind == "vit-va":
            assert e["classes"] is None and -1 <= e["valence"] <= 1 and -1 <= e["arousal"] <= 1
            assert e["quadrant"] in QUADRANTS
        else:
            assert set(e["classes"]) == set(EXPECTED_LABELS[kind])
            assert sum(e["classes"].values()) == pytest.approx(1.0, abs=1e-4)
            assert e["label"] in EXPECTED_LABELS[kind] and e["valence"] is None


def test_analyze_console_script_json_stdout(published):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_monitor.streamer.cli",
            "analyze",
            str(SPEECH_CLIP),
            "--model",
            "pooled:" + str(published("pooled")),
            "--json",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"]["kind"] == "pooled" and len(report["timeline"]) == 2


def test_analyze_speech_time_of_a_clip_that_is_all_speech(tmp_path, capsys, published):
    """Without the gate every window is speech, so all of the 2.39 s clip is (was 1.0 s)."""
    out = tmp_path / "out.json"
    args = ["analyze", str(SPEECH_CLIP), "--model", str(published("hubert")), "--no-vad"]
    assert cli.main([*args, "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    dur = sf.info(str(SPEECH_CLIP)).frames / 16000
    assert summary["speech_windows"] == summary["windows"] == 2
    assert summary["speech_s"] == pytest.approx(dur, abs=1e-3)
    assert f"speech {dur:.1f} s (2/2 windows)" in capsys.readouterr().out


def test_analyze_says_how_many_samples_were_replaced_and_windows_clipped(tmp_path, published):
    """As `run` does: NaN/Inf samples replaced (counted before resampling) and clipped windows."""
    from emotion_monitor.streamer.audio import resample

    speech = resample(load_clip(SPEECH_CLIP), 16000, 44100)
    damaged = np.concatenate([speech, speech / np.abs(speech).max() * 2])  # the second half clips
    damaged[1000:1100] = np.nan
    path = tmp_path / "damaged.wav"
    sf.write(str(path), damaged, 44100, subtype="FLOAT")
    cmd = [sys.executable, "-m", "emotion_monitor.streamer.cli", "analyze", str(path)]
    model = ["--model", str(published("hubert"))]
    proc = subprocess.run([*cmd, *model], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("  input: "))
    assert line.startswith("  input: 100 NaN/Inf samples replaced by silence, ")
    clipped = int(line.rsplit(", ", 1)[1].removesuffix(" clipped windows"))
    proc = subprocess.run([*cmd, *model, "--json", "-"], capture_output=True, timeout=240)
    report = json.loads(proc.stdout)
    assert report["source"]["nonfinite_samples"] == 100
    assert clipped == report["engine"]["clipped_windows"] > 0


def test_analyze_errors(tmp_path, capsys, published):
    assert (
        cli.main(["analyze", str(tmp_path / "missing.wav"), "--model", str(published("hubert"))])
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["analyze", str(SPEECH_CLIP), "--model", "pooled:" + str(tmp_path)]) == 2
    assert "pooled_config.json: missing" in capsys.readouterr().err
    config = tmp_path / "settings.toml"
    for text, error in (
        ("window =\n", "not valid TOML: Invalid value"),
        ("max_batch = 0\n", "max_batch must be an integer >= 1, got 0"),  # analyze hung
        ('window = "abc"\n', "window must be a number in 0.1..30 s, got 'abc'"),
        # refused like `--model-device gpuu`; analyze used to run on "auto"
        ('device = "gpuu"\n', "device must be a string (auto, cpu or cuda), got 'gpuu'"),
    ):
        config.write_text(text)
        assert cli.main(["analyze", str(SPEECH_CLIP), "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {config}: {error}") and err.count("\n") == 1
    with pytest.raises(SystemExit):  # the flag: argparse's choices
        cli.main(["analyze", str(SPEECH_CLIP), "--model-device", "gpuu"])
    assert "invalid choice: 'gpuu'" in capsys.readouterr().err
    # A window shorter than the default hop names that hop as the default.
    assert cli.main(["analyze", str(SPEECH_CLIP), "--window", "0.3"]) == 2
    assert capsys.readouterr().err == (
        "error: hop (default 0.5 s) must be at most window (0.3 s); pass a hop too (--hop)\n"
    )


def _wav_with_rate(x: np.ndarray, rate: int) -> bytes:
    """A 16-bit mono WAV of ``x`` whose header claims ``rate`` (soundfile refuses to write
    absurd rates, so the fmt chunk's rate and byte-rate fields are rewritten)."""
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"fmt " and int.from_bytes(data[24:28], "little") == 16000
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2).to_bytes(4, "little")
    return bytes(data)


def test_analyze_says_a_file_is_too_short_or_its_rate_impossible(tmp_path, capsys, published):
    model = str(published("vit-va"))
    t = np.arange(1600) / 16000  # 100 ms: less than the engine's shortest window (128 ms)
    short = tmp_path / "short.wav"
    sf.write(str(short), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    assert cli.main(["analyze", str(short), "--model", model, "--no-vad"]) == 2
    assert capsys.readouterr().err == (
        f"error: {short}: too short to analyse: 0.100 s of audio, at least 0.128 s is needed\n"
    )
    # with a 0.1 s window the same file is long enough
    argv = ["analyze", str(short), "--model", model, "--no-vad", "--window", "0.1", "--hop", "0.1"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    huge = tmp_path / "huge.wav"
    huge.write_bytes(_wav_with_rate(np.zeros(32000, np.float32), 2_000_000_000))
    assert cli.main(["analyze", str(huge), "--model", model]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {huge}: the header claims a sample rate of 2000000000 Hz")


def test_predict_refuses_short_audio_and_impossible_rates(published, speech):
    model = load_model(str(published("vit-va")), device="cpu")
    with pytest.raises(UploadError, match=r"^a.wav: too short to analyse: 0.050 s of audio"):
        predict_response(speech[:800], model, Settings(), "a.wav")
    with pytest.raises(
        UploadError, match=r"^upload: the header claims a sample rate of 2000000000"
    ):
        decode_upload(_wav_with_rate(speech, 2_000_000_000))
    with pytest.raises(UploadError, match=r"sample rate of 1 Hz, outside the 4000..768000 Hz"):
        decode_upload(_wav_with_rate(speech[:100], 1), "a.wav")
    # a plausible rate is taken at its word: the audio plays twice as fast
    assert abs(len(decode_upload(_wav_with_rate(speech, 32000), "a.wav")) - len(speech) / 2) <= 1


def test_streamed_file_is_chunk_invariant(tmp_path, published, speech):
    """A long 44.1 kHz stereo file gives the same timeline whatever the block size."""
    from emotion_monitor.streamer.audio import resample

    long = np.tile(resample(speech, 16000, 44100), 6)  # about 14 s
    path = tmp_path / "long.wav"
    sf.write(str(path), np.stack([long, 0.5 * long], axis=1), 44100)
    model = load_model(str(published("hubert")), device="cpu")
    settings = Settings(window=2.0, hop=1.0)
    a, sa, _ = run_blocks(iter_file_blocks(path, block_seconds=10.0), model, settings)
    b, sb, _ = run_blocks(iter_file_blocks(path, block_seconds=1.3), model, settings)
    assert sa["duration_s"] == pytest.approx(len(long) / 44100, abs=2e-3)
    assert len(a) == len(b) >= 12
    assert sa == sb
    for ea, eb in zip(a, b, strict=True):
        assert (ea["t0"], ea["speech"], ea["label"]) == (eb["t0"], eb["speech"], eb["label"])


@needs_ffmpeg
def test_ffmpeg_pipe_blocks(tmp_path, speech):
    path = tmp_path / "clip.m4a"
    path.write_bytes(_m4a_bytes(speech, tmp_path))
    blocks = list(iter_file_blocks(path, block_seconds=0.5))
    assert len(blocks) >= 4  # really streamed, not one read
    total = sum(len(b) for b in blocks)
    assert abs(total - len(speech)) < 0.06 * 16000  # AAC priming may add a few ms


def test_predict_response_classes(published, speech):
    model = load_model(str(published("wav2vec2")), device="cpu")
    r = predict_response(speech, model, Settings(window=1.0, hop=0.5))
    scores = [x["score"] for x in r["results"]]
    assert [x["label"] for x in r["results"]] and set(x["label"] for x in r["results"]) == set(
        model.labels
    )
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-3)
    assert r["dominant"] == r["results"][0]
    assert r["valence"] is None and r["arousal"] is None
    assert len(r["timeline"]) == 4 and r["duration_s"] == pytest.approx(
        len(speech) / 16000, abs=1e-3
    )
    json.dumps(r)  # JSON-able as is


def test_predict_response_valence_arousal(published, speech):
    model = load_model(str(published("vit-va")), device="cpu")
    r = predict_response(speech, model, Settings())
    assert r["results"] and {x["label"] for x in r["results"]} <= {q.lower() for q in QUADRANTS}
    assert sum(x["score"] for x in r["results"]) == pytest.approx(1.0, abs=1e-3)
    assert -1 <= r["valence"] <= 1 and -1 <= r["arousal"] <= 1
    assert r["dominant"] == r["results"][0]


def test_predict_response_silence(published):
    model = load_model(str(published("hubert")), device="cpu")
    r = predict_response(np.zeros(48000, np.float32), model, Settings())
    assert r["results"] == [] and r["dominant"] is None and r["valence"] is None
    assert r["timeline"] and not any(e["speech"] for e in r["timeline"])


def test_decode_upload_wav_resamples_and_mixes(speech):
    stereo = np.stack([speech, speech], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 16000, format="WAV")
    x = decode_upload(buf.getvalue(), "a.wav")
    np.testing.assert_allclose(x, speech, atol=1e-4)
    buf = io.BytesIO()
    sf.write(buf, speech, 16000, format="FLAC")
    assert len(decode_upload(buf.getvalue(), "a.flac")) == len(speech)


@needs_ffmpeg
def test_decode_upload_m4a(tmp_path, speech):
    x = decode_upload(_m4a_bytes(speech, tmp_path), "voice memo.m4a")
    assert x.dtype == np.float32 and abs(len(x) - len(speech)) < 0.06 * 16000
    with pytest.raises(UploadError, match="longer than the limit of 1 s"):
        decode_upload(_m4a_bytes(speech, tmp_path), "clip.m4a", max_seconds=1.0)


def test_decode_upload_limits(speech):
    buf = io.BytesIO()
    sf.write(buf, speech, 16000, format="WAV")
    data = buf.getvalue()
    with pytest.raises(UploadError, match=r"is 0.\d+ MB; the limit is 0.001 MB"):
        decode_upload(data, "a.wav", max_bytes=1000)
    with pytest.raises(UploadError, match="longer than the limit of 2 s"):
        decode_upload(data, "a.wav", max_seconds=2.0)
    with pytest.raises(UploadError, match="empty"):
        decode_upload(b"", "a.wav")
    with pytest.raises(UploadError, match="cannot decode|ffmpeg is not installed"):
        decode_upload(b"this is not audio at all" * 20, "notes.m4a")
