"""``emotion-monitor replay``: a recording of ``serve --record`` published again through a live
server, and ``GET /history``, the recorded timeline of one call."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request

import pytest
from call_fixtures import LOUD_CUSTOMER, SHIFT, fast_settings, record_shift, running
from emotion_monitor.streamer.cli import main as cli_main
from emotion_monitor.streamer.replay import Replay


@pytest.fixture(scope="module")
def shift(tmp_path_factory):
    """A recorded shift of three Twilio calls (see call_fixtures.SHIFT) and what was published."""
    path = tmp_path_factory.mktemp("shift") / "shift.sqlite"
    published = asyncio.run(record_shift(path))
    return path, published


def without_stream(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("stream", "time")} for m in messages]


async def test_replay_publishes_every_recorded_call_under_each_copy_id(shift):
    path, recorded = shift
    replay = Replay(path, speed=50, fanout=2)
    settings = fast_settings(alerts=(LOUD_CUSTOMER,))
    async with running(settings=settings) as (server, col):
        await replay.run(server.service)
        copies = [f"{sid}-{k}" for sid in SHIFT for k in (1, 2)]
        await col.ended(copies)
    assert replay.stats["calls_started"] == 6 and replay.stats["calls_refused"] == 0
    for sid, (agent, _) in SHIFT.items():
        original = [m for m in recorded.messages if m.get("stream") == sid]
        for copy in (f"{sid}-1", f"{sid}-2"):
            mine = [m for m in col.messages if m.get("stream") == copy]
            kinds = [m["type"] for m in mine]
            # started first, ended last, the events (and the alerts they fire) in between
            assert kinds[0] == "stream_started" and kinds[-1] == "stream_ended"
            meta = mine[0]["meta"]
            assert meta["custom_parameters"] == {"agent": agent} and meta["source"] == "twilio"
            assert meta["replay"]["of"] == sid
            for track in ("customer", "agent"):

                def of(ms, track=track):
                    return [m for m in ms if m["type"] == "event" and m["track"] == track]

                assert without_stream(of(mine)) == without_stream(of(original))
            # the server's rules fire again at the recorded places (stream time)
            alerts = [(m["name"], m["track"], m["t"]) for m in mine if m["type"] == "alert"]
            assert alerts == [
                (m["name"], m["track"], m["t"]) for m in original if m["type"] == "alert"
            ]
    assert any(m["type"] == "alert" for m in col.messages)
    # copy 2 of each call starts half the call's length after copy 1 (replay seconds)
    plan = {c.stream: c.start for c in replay.schedule()}
    length = next(c["length"] for c in replay.calls if c["stream"] == "CA-alice")
    assert plan["CA-alice-2"] - plan["CA-alice-1"] == pytest.approx(length / 2 / 50)


async def test_replay_beyond_max_streams_refuses_copies_and_finishes_the_rest(shift):
    path, _ = shift
    replay = Replay(path, speed=50, fanout=3)
    async with running(settings=fast_settings(max_streams=2)) as (server, col):
        await replay.run(server.service)
        started = [m["stream"] for m in col.of_type("stream_started")]
        await col.ended(started)
    assert replay.stats["calls_refused"] > 0
    assert replay.stats["calls_started"] + replay.stats["calls_refused"] == 9
    assert len(started) == replay.stats["calls_started"]
    for stream in started:  # every replayed call is complete, however many were refused
        assert len([e for e in col.of_type("event") if e["stream"] == stream]) == 24


async def test_looped_replay_starts_every_call_again_under_its_id(shift):
    path, _ = shift
    replay = Replay(path, speed=50, loop=True)
    async with running(settings=fast_settings()) as (server, col):
        task = asyncio.create_task(replay.run(server.service))

        def starts(stream: str) -> int:
            return sum(m["stream"] == stream for m in col.of_type("stream_started"))

        await col.wait_for(lambda: all(starts(sid) >= 2 for sid in SHIFT))
        task.cancel()
    for sid in SHIFT:  # the first run was whole and over (ended) before the second began
        mine = [m["type"] for m in col.messages if m.get("stream") == sid]
        end = mine.index("stream_ended")
        assert mine[0] == "stream_started" and mine[end + 1] == "stream_started"
        assert mine[:end].count("event") == 24


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            status, body, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        status, body, ctype = err.code, err.read(), err.headers["Content-Type"]
    return status, json.loads(body) if ctype == "application/json" else body.decode()


async def test_history_route_and_the_floor_pages(shift, tmp_path):
    path, recorded = shift
    async with running(settings=fast_settings(record=str(path))) as (server, _):
        base = f"http://127.0.0.1:{server.port}"
        status, h = await asyncio.to_thread(get, base + "/history?stream=CA-alice")
        assert status == 200 and h["stream"] == "CA-alice"
        assert h["meta"]["custom_parameters"] == {"agent": "Alice"}
        events = [e for e in recorded.of_type("event") if e["stream"] == "CA-alice"]
        customer = [e for e in events if e["track"] == "customer"]
        line = h["timeline"]["customer"]
        assert line["t"] == [e["t1"] for e in customer]
        assert line["valence"] == [e["valence_smooth"] for e in customer]
        assert [a["name"] for a in h["alerts"]] == ["loud_customer"]
        shares = h["tracks"]["customer"]["quadrants_s"]
        assert sum(shares.values()) == pytest.approx(h["tracks"]["customer"]["speech_s"], abs=0.02)

        assert await asyncio.to_thread(get, base + "/history?stream=bad/id") == (
            400,
            {
                "type": "error",
                "v": 1,
                "code": "bad_field",
                "message": "history: 'stream' must be 1-64 characters of A-Z a-z 0-9 _ . : -",
            },
        )
        status, err = await asyncio.to_thread(get, base + "/history?stream=CA-nobody")
        assert status == 404 and err["code"] == "no_such_call"

        for page, marker in (("/floor", "floor.js"), ("/call/CA-alice", "call.js")):
            status, html = await asyncio.to_thread(get, base + page)
            assert status == 200 and marker in html
        assert (await asyncio.to_thread(get, base + "/call/a%2Fb"))[0] == 404
    async with running() as (server, _):  # not recording: no history, said so
        status, err = await asyncio.to_thread(get, f"http://127.0.0.1:{server.port}/history")
        assert status == 404 and err["message"] == "nothing at /history"


def test_replay_command_refuses_what_it_cannot_replay(tmp_path, shift, capsys):
    path, _ = shift
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("hello")
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    cases = [
        ([str(tmp_path / "none.sqlite")], "no such recording"),
        ([str(not_sqlite)], "not a recording (file is not a database)"),
        ([str(empty)], "not a recording (no such table"),
        ([str(path), "--speed", "0"], "speed must be > 0, got 0.0"),
        ([str(path), "--fanout", "0"], "fanout must be 1..10000, got 0"),
    ]
    for argv, message in cases:
        assert cli_main(["replay", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
