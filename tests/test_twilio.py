"""Twilio Media Streams on /twilio over real loopback websockets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import numpy as np
import pytest
import websockets
from call_fixtures import (
    TIMEOUT,
    LoudnessModel,
    clips,
    fast_settings,
    running,
    twilio_call,
    ws_url,
)
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.telephony import simulators, twilio

CALL = "CA" + "ab" * 16


def mean_arousal(events: list[dict]) -> float:
    values = [e["arousal"] for e in events if e["speech"] and e["arousal"] is not None]
    assert values, "no speech windows"
    return float(np.mean(values))


async def test_call_tracks_metadata_and_close():
    angry, sad = clips()
    async with running() as (server, col):
        code, reason = await twilio_call(
            server, CALL, angry, sad, custom_parameters={"queue": "billing", "lang": "en"}
        )
        await col.ended([CALL])
    assert (code, reason) == (1000, "stream stopped")
    started = col.of_type("stream_started")[0]
    assert started["stream"] == CALL
    meta = started["meta"]
    assert meta["source"] == "twilio" and meta["call_sid"] == CALL
    assert meta["custom_parameters"] == {"queue": "billing", "lang": "en"}
    assert meta["tracks"] == ["customer", "agent"]
    events = col.events()
    assert set(events) == {(CALL, "customer"), (CALL, "agent")}
    # 2.39 s of audio per track at 16 kHz: windows at 0, 0.5 (2 s each) plus the tail
    for evs in events.values():
        assert [e["seq"] for e in evs] == list(range(len(evs)))
        assert evs[-1]["t1"] == pytest.approx(len(angry) / 16000, abs=0.01)
    # the loudness stand-in: the sad agent, played softer, is less aroused
    assert mean_arousal(events[(CALL, "customer")]) > mean_arousal(events[(CALL, "agent")])


async def test_angry_customer_more_aroused_than_sad_agent(real_model):  # noqa: F811
    angry, sad = clips()
    settings = Settings(host="127.0.0.1", port=0)  # VAD on, as served
    async with running(real_model, settings) as (server, col):
        await twilio_call(server, CALL, angry, sad)
        await col.ended([CALL])
    events = col.events()
    assert mean_arousal(events[(CALL, "customer")]) > mean_arousal(events[(CALL, "agent")])


async def test_signature_checked_when_auth_token_set(caplog):
    angry, sad = clips()
    token = "twilio-auth-token"
    async with running(twilio_auth_token=token) as (server, col):
        url = f"wss://127.0.0.1:{server.port}/twilio"  # what Twilio would have signed
        # unsigned, signed with another token, signed for another URL: refused before any audio
        for headers in (
            {},
            {"X-Twilio-Signature": twilio.twilio_signature("another-token", url)},
            {"X-Twilio-Signature": twilio.twilio_signature(token, url + "x")},
        ):
            with pytest.raises(websockets.InvalidStatus) as refused:
                target = ws_url(server, "/twilio")
                async with websockets.connect(target, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
        assert "X-Twilio-Signature" in caplog.text
        signed = {"X-Twilio-Signature": twilio.twilio_signature(token, url)}
        code, reason = await twilio_call(server, CALL, angry, sad, headers=signed)
        await col.ended([CALL])
        assert server.service.engine.streams == []
    assert (code, reason) == (1000, "stream stopped")
    assert len(col.of_type("stream_started")) == 1  # only the signed call got in


async def test_chunking_does_not_change_events():
    angry, sad = clips()
    async with running() as (server, col):
        await twilio_call(server, "CA1", angry, sad, chunk_ms=20)
        await twilio_call(server, "CA2", angry, sad, chunk_ms=110)
        await col.ended(["CA1", "CA2"])
    e = col.events()
    for track in ("customer", "agent"):
        a, b = e[("CA1", track)], e[("CA2", track)]
        assert [x["t1"] for x in a] == [x["t1"] for x in b]
        assert [x["arousal"] for x in a] == pytest.approx([x["arousal"] for x in b], abs=1e-5)


def test_gap_in_timestamps_is_filled_with_bounded_silence():
    opened, pushed = [], []

    class FakeService:
        streams: dict = {}

        def open_stream(self, stream, **meta):
            opened.append(stream)

        def push(self, stream, samples, track):
            pushed.append((track, len(samples)))

        def end_stream(self, stream):
            pass

    session = twilio.TwilioSession(FakeService(), max_gap=1.0)
    msgs = list(simulators.twilio_call("CA9", np.zeros(16000, np.float32), None))
    session.handle(msgs[1])  # start
    media = [json.loads(m) for m in msgs if '"media"' in m]
    session.handle(json.dumps(media[0]))
    media[1]["media"]["timestamp"] = "500"  # 480 ms lost after the first 20 ms packet
    session.handle(json.dumps(media[1]))
    assert session.stats["gap_samples"] == 8000 * 480 // 1000
    media[2]["media"]["timestamp"] = "100000"  # a huge jump is capped at max_gap
    session.handle(json.dumps(media[2]))
    assert session.stats["gap_samples"] == 3840 + 8000
    media[3]["media"]["timestamp"] = "100020"  # and the clock continues from there
    session.handle(json.dumps(media[3]))
    assert session.stats["gap_samples"] == 3840 + 8000
    session.close()


async def _send_and_close_code(server, messages) -> tuple[int, str]:
    async with websockets.connect(ws_url(server, "/twilio")) as ws:
        for m in messages:
            await ws.send(m)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        return ws.close_code, ws.close_reason


async def test_bad_inputs_close_with_codes_and_free_state():
    msgs = list(simulators.twilio_call("CA7", np.zeros(8000, np.float32), None))
    connected, start, media = msgs[0], msgs[1], msgs[2]
    bad_b64 = json.loads(media)
    bad_b64["media"]["payload"] = "***"
    no_sid = json.loads(start)
    del no_sid["start"]["callSid"]
    alaw = json.loads(start)
    alaw["start"]["mediaFormat"]["encoding"] = "audio/x-alaw"
    cases = [
        ([connected, "not json"], 1007, "not valid JSON"),
        ([connected, "[1, 2]"], 1007, "not a JSON object"),
        ([connected, media], 1008, "'media' before 'start'"),
        ([connected, b"\x00\x01"], 1003, "binary"),
        ([json.dumps(no_sid)], 1008, "callSid"),
        ([json.dumps(alaw)], 1003, "unsupported encoding"),
        ([start, json.dumps(bad_b64)], 1007, "base64"),
        ([start, start], 1008, "second 'start'"),
    ]
    async with running() as (server, col):
        for messages, code, words in cases:
            got_code, reason = await _send_and_close_code(server, messages)
            assert got_code == code and words in reason, (messages[-1][:60], got_code, reason)
        # a duplicate callSid while the first call streams is refused; the first goes on
        async with websockets.connect(ws_url(server, "/twilio")) as first:
            await first.send(start)
            await col.wait_for(lambda: "CA7" in server.service.streams)
            code, reason = await _send_and_close_code(server, [start])
            assert code == 1008 and "already open" in reason
            for m in msgs[2:-1]:
                await first.send(m)
        # dropped without 'stop': the stream still ends and its state is freed
        await col.wait_for(lambda: not server.service.engine.streams and not server.service.streams)
        # the server still serves a good call after all that
        code, _ = await twilio_call(server, "CA8", np.zeros(8000, np.float32), None)
        assert code == 1000
        await col.ended(["CA8"])
        assert server.service.streams == {} and server.service.engine.streams == []


async def test_stream_limit_close_code():
    settings = fast_settings(max_streams=1)
    async with running(LoudnessModel(), settings) as (server, col):
        async with websockets.connect(ws_url(server, "/twilio")) as first:
            msgs = list(simulators.twilio_call("CA1", np.zeros(8000, np.float32), None))
            await first.send(msgs[1])
            await col.wait_for(lambda: "CA1" in server.service.streams)
            code, reason = await twilio_call(server, "CA2", np.zeros(8000, np.float32), None)
            assert code == 1013
            assert "maximum of 1 streams" in reason
            payload = base64.b64encode(b"\xff" * 160).decode()
            await first.send(
                json.dumps({"event": "media", "media": {"track": "inbound", "payload": payload}})
            )
        await col.ended(["CA1"])


async def test_idle_call_is_ended(caplog):
    caplog.set_level(logging.WARNING, logger="emotion_monitor.streamer.telephony.twilio")
    async with running() as (server, col):
        server.add_websocket_route("/twilio-fast", twilio.TwilioHandler(idle_timeout=0.3))
        await server.stop()
        await server.start()
        msgs = list(simulators.twilio_call("CA-idle", np.zeros(8000, np.float32), None))
        async with websockets.connect(ws_url(server, "/twilio-fast")) as ws:
            for m in msgs[:5]:
                await ws.send(m)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)  # the server hangs up
        await col.ended(["CA-idle"])
    assert any("no message for" in r.getMessage() for r in caplog.records)


async def test_mistyped_fields_close_1008_naming_the_field(caplog):
    msgs = list(simulators.twilio_call("CA5", np.zeros(8000, np.float32), None))
    start, media = json.loads(msgs[1]), json.loads(msgs[2])

    def changed(msg: dict, part: str, key: str, value) -> str:
        out = json.loads(json.dumps(msg))
        out[part][key] = value
        return json.dumps(out)

    good_start = json.dumps(start)
    cases = [
        ([changed(start, "start", "mediaFormat", "audio/x-mulaw")], "start.mediaFormat"),
        ([changed(start, "start", "tracks", 5)], "start.tracks"),
        ([changed(start, "start", "tracks", [["inbound"]])], "start.tracks"),
        ([changed(start, "start", "tracks", "inbound")], "start.tracks"),
        ([changed(start, "start", "customParameters", ["queue"])], "start.customParameters"),
        ([good_start, changed(media, "media", "timestamp", "1e400")], "media.timestamp"),
        ([good_start, changed(media, "media", "timestamp", 1e400)], "media.timestamp"),
        ([good_start, changed(media, "media", "timestamp", 10**400)], "media.timestamp"),
        ([good_start, changed(media, "media", "timestamp", "NaN")], "media.timestamp"),
        ([good_start, changed(media, "media", "timestamp", [20])], "media.timestamp"),
        ([good_start, changed(media, "media", "track", ["inbound"])], "media.track"),
    ]
    async with running() as (server, col):
        for messages, field in cases:
            code, reason = await _send_and_close_code(server, messages)
            assert code == 1008 and field in reason, (messages[-1][:80], code, reason)
        # a 'dtmf' that is not an object is only logged: the call goes on to its 'stop'
        dtmf = json.dumps({"event": "dtmf", "dtmf": "5"})

        def freed() -> bool:
            return server.service.streams == {} and server.service.engine.streams == []

        # every refused call above has ended its stream (the client sees the close before the
        # server's handler has ended it), so the call below is the only CA5
        await col.wait_for(freed)
        async with websockets.connect(ws_url(server, "/twilio")) as ws:
            for m in [*msgs[:3], dtmf, *msgs[3:]]:
                await ws.send(m)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert (ws.close_code, ws.close_reason) == (1000, "stream stopped")
        await col.wait_for(freed)  # the call's state is freed once it has ended
    assert "connection handler failed" not in caplog.text
