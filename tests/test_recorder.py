"""Recording events and alerts to SQLite, and the ``report`` command."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest
from call_fixtures import clips, fast_settings, running, twilio_call
from conftest import load_clip, ravdess_clip
from emotion_monitor.streamer import recorder
from emotion_monitor.streamer.alerts.rules import AlertRule
from emotion_monitor.streamer.analysis import Summary
from emotion_monitor.streamer.cli import main as cli_main
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.protocol import Event
from emotion_monitor.streamer.settings import Settings


async def test_served_calls_are_recorded_and_reported(tmp_path, capsys):
    db = tmp_path / "calls.sqlite"
    angry, sad = clips()
    rule = AlertRule("loud_customer", (("arousal_smooth", ">", -0.5),), 1.0, "customer")
    settings = fast_settings(record=str(db), alerts=(rule,))
    async with running(settings=settings) as (server, col):
        await twilio_call(server, "CA1", np.tile(angry, 2), np.tile(sad * 0.3, 2))
        await twilio_call(server, "CA2", sad * 0.3, None)
        await col.ended(["CA1", "CA2"])
    # running() closed the integrations: everything is on disk
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    n_events = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert n_events == len(col.of_type("event"))
    assert con.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == len(col.of_type("alert"))
    started, ended, meta = con.execute(
        "SELECT started, ended, meta FROM streams WHERE stream = 'CA1'"
    ).fetchone()
    assert ended >= started and '"source": "twilio"' in meta
    con.close()

    summaries = recorder.summarize(db)
    assert [s["stream"] for s in summaries] == ["CA1", "CA2"]
    ca1 = summaries[0]
    assert set(ca1["tracks"]) == {"customer", "agent"}
    cust = ca1["tracks"]["customer"]
    assert abs(sum(cust["quadrants_s"].values()) - cust["speech_s"]) < 0.01
    assert cust["speech_s"] <= ca1["duration"] + 0.01
    assert cust["arousal_mean"] > ca1["tracks"]["agent"]["arousal_mean"]
    assert [a["name"] for a in ca1["alerts"]] == ["loud_customer"]

    out = tmp_path / "timeline.png"
    assert cli_main(["report", str(db), "--stream", "CA1", "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert "call CA1" in text and "customer vs agent" in text
    assert "ALERT loud_customer on customer" in text and "CA2" not in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["report", str(db), "--json"]) == 0
    assert '"stream": "CA2"' in capsys.readouterr().out


def test_listener_from_many_threads_batches_and_flush(tmp_path):
    rec = recorder.Recorder(tmp_path / "r.sqlite", interval=0.05)

    def produce(k: int) -> None:
        for i in range(200):
            rec.listener(
                [
                    {
                        "type": "event",
                        "stream": f"s{k}",
                        "track": "main",
                        "seq": i,
                        "t0": i * 0.5,
                        "t1": i * 0.5 + 2,
                        "speech": True,
                    }
                ]
            )

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.flush()
    con = sqlite3.connect(tmp_path / "r.sqlite")
    assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 800
    # readable while the recorder still has the file open (WAL)
    rec.listener([{"type": "alert", "stream": "s0", "track": "main", "name": "x", "t": 1.0}])
    rec.close()
    assert con.execute("SELECT name FROM alerts").fetchall() == [("x",)]
    assert rec.stats["batches"] < 800 and rec.stats["dropped"] == 0


def test_bounded_queue_drops_oldest(tmp_path):
    rec = recorder.Recorder(tmp_path / "r.sqlite", interval=60, queue_size=10)
    rec.listener([{"type": "event", "stream": "s", "track": "t", "seq": i} for i in range(25)])
    rec.close()
    con = sqlite3.connect(tmp_path / "r.sqlite")
    assert [r[0] for r in con.execute("SELECT seq FROM events")] == list(range(15, 25))
    assert rec.stats["dropped"] == 15


def test_report_errors(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such recording" in capsys.readouterr().err
    recorder.Recorder(tmp_path / "empty.sqlite").close()
    assert cli_main(["report", str(tmp_path / "empty.sqlite")]) == 1
    capsys.readouterr()
    audio = tmp_path / "long.wav"
    audio.write_bytes(b"RIFF" + bytes(5000))  # not SQLite at all
    assert cli_main(["report", str(audio)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"report: {audio}: not a recording (file is not a database)")
    assert "'serve --record FILE.sqlite'" in err and err.count("\n") == 1


def record_and_report(events: list[Event], path) -> dict:
    """The report's summary of one track's events, written as the server's recorder does."""
    rec = recorder.Recorder(path)
    rec.listener([ev.to_dict() for ev in events])
    rec.close()
    [call] = recorder.summarize(path)
    [track] = call["tracks"].values()
    return track


def test_analyze_and_report_count_speech_and_rank_labels_alike(tmp_path):
    """2.4 s of speech in 2 s windows every 0.5 s is the window [0, 2] and the flushed tail
    [0.4, 2.4]: 2.4 s of speech (analyze said 1.0 s: hop x windows). The windows' own labels say
    sad, the smoothed label (the one the dashboard shows) says angry: both rank by the latter."""
    events = [
        Event("c", "main", i, t0, t0 + 2.0, True, 0.9, label="sad", label_smooth="angry")
        for i, t0 in enumerate((0.0, 0.4))
    ]
    summary = Summary()
    for ev in events:
        summary.add(ev)
    analyzed = summary.result()
    reported = record_and_report(events, tmp_path / "r.sqlite")
    assert analyzed["speech_s"] == reported["speech_s"] == pytest.approx(2.4)
    assert analyzed["label_distribution"] == {"angry": 1.0}
    assert reported["label"] == "angry"


def test_analyze_and_report_agree_on_real_speech_with_a_pause(tmp_path, default_model):
    angry = load_clip(ravdess_clip("angry"))
    audio = np.concatenate([angry, np.zeros(3 * 16_000, np.float32), angry])
    engine = Engine(default_model, Settings())
    events = engine.push("call", audio) + engine.flush()
    assert events[0].speech and not all(e.speech for e in events)  # the pause is silence
    summary = Summary()
    for ev in events:
        summary.add(ev)
    analyzed = summary.result()
    reported = record_and_report(events, tmp_path / "r.sqlite")
    assert reported["speech_s"] == pytest.approx(analyzed["speech_s"], abs=0.01)
    assert reported["quadrants_s"] == pytest.approx(analyzed["quadrant_s"], abs=0.01)
    assert reported["label"] == next(iter(analyzed["label_distribution"]))
    # the first window counts whole (2 s): more than one hop per speech window
    assert analyzed["speech_s"] > 0.5 * analyzed["speech_windows"]
    assert analyzed["speech_s"] <= len(audio) / 16_000


def test_serve_flags_are_validated(tmp_path):
    import argparse

    from emotion_monitor.streamer.alerts.rules import CUSTOMER_FRUSTRATION
    from emotion_monitor.streamer.commands.serve import (
        add_call_center_arguments,
        call_center_settings,
    )
    from emotion_monitor.streamer.settings import Settings

    parser = argparse.ArgumentParser()
    add_call_center_arguments(parser)
    args = parser.parse_args(["--record", str(tmp_path / "r.sqlite"), "--audiosocket-port", "0"])
    s = call_center_settings(Settings(), args)
    assert s.record == str(tmp_path / "r.sqlite") and s.audiosocket_port == 0
    assert s.alerts == (CUSTOMER_FRUSTRATION,) and s.webhook_url is None
    for bad, message in (
        (["--webhook", "ftp://x"], "webhook_url must be a string starting with http://"),
        (["--webhook", ""], "webhook_url must be"),
        (["--audiosocket-port", "65536"], "audiosocket_port must be an integer in 0..65535"),
        (["--audiosocket-port", "-1"], "audiosocket_port must be an integer in 0..65535"),
        (["--record", "/nonexistent/r.sqlite"], "--record /nonexistent/r.sqlite: the folder"),
        (["--alerts-config", str(tmp_path / "missing.toml")], "missing.toml"),
    ):
        with pytest.raises(ValueError, match=message):
            call_center_settings(Settings(), parser.parse_args(bad))
    s = call_center_settings(Settings(), parser.parse_args(["--webhook", "https://x/hook"]))
    assert s.webhook_url == "https://x/hook"


async def test_calls_that_reuse_a_stream_id_are_reported_apart(tmp_path, capsys):
    """A second <Stream> of a Twilio call (or an AudioHook conversation after a transfer)
    comes back with the same stream id: report must not merge it into the first call."""
    db = tmp_path / "calls.sqlite"
    angry, sad = clips()
    rule = AlertRule("talking", (("t1", ">=", 0.0),), 0.3, "customer")
    async with running(settings=fast_settings(record=str(db), alerts=(rule,))) as (server, col):
        await twilio_call(server, "CA1", angry, None)
        await col.ended(["CA1"])
        first_life = len(col.of_type("event"))
        await twilio_call(server, "CA1", np.tile(sad, 3), None)
        await col.wait_for(lambda: len(col.of_type("stream_ended")) == 2)
    first, second = recorder.summarize(db, "CA1")
    assert first["tracks"]["customer"]["events"] == first_life
    assert second["tracks"]["customer"]["events"] == len(col.of_type("event")) - first_life
    assert first["duration"] == pytest.approx(len(angry) / 16000, abs=0.01)
    assert second["duration"] == pytest.approx(3 * len(sad) / 16000, abs=0.01)
    assert len(first["alerts"]) == len(second["alerts"]) == 1
    assert cli_main(["report", str(db), "--plot", str(tmp_path / "t.png")]) == 0
    assert capsys.readouterr().out.count("call CA1") == 2


def test_report_reads_recordings_made_before_calls_were_told_apart(tmp_path):
    """Files written without the events.call column still report, one summary per id."""
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE streams (id INTEGER PRIMARY KEY, stream TEXT NOT NULL, started REAL, "
        "ended REAL, meta TEXT);"
        "CREATE TABLE events (stream TEXT NOT NULL, track TEXT NOT NULL, seq INTEGER, t0 REAL, "
        "t1 REAL, speech INTEGER, valence REAL, arousal REAL, valence_smooth REAL, "
        "arousal_smooth REAL, label TEXT, label_smooth TEXT, quadrant TEXT, latency_ms REAL, "
        "data TEXT);"
        "CREATE TABLE alerts (stream TEXT NOT NULL, track TEXT, name TEXT, t REAL, since REAL, "
        "time REAL, data TEXT);"
        "INSERT INTO streams VALUES (1, 'CA1', 1.0, 2.0, '{}');"
        "INSERT INTO events VALUES ('CA1', 'customer', 0, 0.0, 2.0, 1, 0.1, 0.2, 0.1, 0.2, "
        "'calm', 'calm', 'CALM', 5.0, '{}');"
        "INSERT INTO alerts VALUES ('CA1', 'customer', 'x', 2.0, 1.0, 2.0, '{}');"
    )
    con.commit()
    con.close()
    [call] = recorder.summarize(db)
    assert call["tracks"]["customer"]["events"] == 1 and len(call["alerts"]) == 1
