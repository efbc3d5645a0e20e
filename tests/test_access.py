"""Access on real sockets: the token on every route but /healthz (HTTP, POST, every websocket
route), the token never in a log, the origin allow-list, TLS, the Python client, and what
``serve`` refuses to expose."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import io
import ipaddress
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
from call_fixtures import LoudnessModel, clips, fast_settings
from emotion_monitor.streamer.client import subscribe
from emotion_monitor.streamer.commands.serve import attach
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.server.access import Access
from emotion_monitor.streamer.server.app import Server
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.telephony import simulators
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect

TOKEN = "tok-Rk3v9Qw2Zp7Lx5Nc8Vb"
WRONG = "tok-Rk3v9Qw2Zp7Lx5Nc8Vc"  # one character off
TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def protected(access: Access | None = None, tls: ssl.SSLContext | None = None):
    """A real server with the integrations attached as ``serve`` does, behind ``access``."""
    settings = fast_settings()
    service = MonitorService(Engine(LoudnessModel(), settings)).start()
    server = Server(service, settings, access=access or Access(TOKEN), tls=tls)
    extras = await attach(server, service, settings)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        await asyncio.to_thread(service.stop)
        await extras.close()


def request(
    url: str, headers: dict | None = None, data: bytes | None = None, context=None
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one plain HTTP request, 4xx included."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=context) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def speech_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, clips()[0][: 3 * 16_000], 16_000, format="WAV")
    return buf.getvalue()


async def test_every_http_route_but_healthz_needs_the_token():
    async with protected() as server:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/", "/index.html", "/static/app.js", "/static/auth.js", "/metrics", "/nope"):
            for headers in ({}, bearer(WRONG), {"Cookie": f"emotion_monitor_token={WRONG}"}):
                status, head, body = await asyncio.to_thread(request, base + path, headers)
                assert status == 401, (path, headers)
                assert json.loads(body)["code"] == "unauthorized"
                assert head["WWW-Authenticate"].startswith("Bearer")
        # the right token, as a program sends it and as the dashboard's cookie carries it
        for headers in (bearer(TOKEN), {"Cookie": f"theme=dark; emotion_monitor_token={TOKEN}"}):
            status, _, body = await asyncio.to_thread(request, base + "/", headers)
            assert status == 200 and b'src="/static/auth.js"' in body
            status, _, body = await asyncio.to_thread(request, base + "/metrics", headers)
            assert status == 200 and b"emotion_monitor_windows_total" in body
            status, _, _ = await asyncio.to_thread(request, base + "/nope", headers)
            assert status == 404  # past the door, the routes answer as without a token
        status, _, body = await asyncio.to_thread(request, base + "/healthz")
        assert status == 200 and json.loads(body)["ok"] is True


async def test_a_browser_without_the_token_gets_the_sign_in_page():
    async with protected() as server:
        url = f"http://127.0.0.1:{server.port}/"
        html = {"Accept": "text/html,application/xhtml+xml"}
        status, head, body = await asyncio.to_thread(request, url, html)
        assert status == 401 and head["Content-Type"].startswith("text/html")
        page = body.decode()
        assert 'data-auth="required"' in page and "function showSignIn" in page  # auth.js inline
        cookie = {"Cookie": f"emotion_monitor_token={WRONG}"}
        status, _, body = await asyncio.to_thread(request, url, {**html, **cookie})
        assert status == 401 and b'data-auth="refused"' in body


async def test_post_predict_needs_the_token():
    async with protected() as server:
        url = f"http://127.0.0.1:{server.port}/predict"
        wav = {"Content-Type": "audio/wav"}
        for headers in (wav, {**wav, **bearer(WRONG)}):
            status, _, body = await asyncio.to_thread(request, url, headers, speech_wav())
            assert status == 401 and json.loads(body)["code"] == "unauthorized"
        status, _, body = await asyncio.to_thread(
            request, url, {**wav, **bearer(TOKEN)}, speech_wav()
        )
        assert status == 200 and json.loads(body)["results"], body
        assert server.stats["predict_requests"] == 1  # the refused ones never reached the route


@pytest.mark.parametrize("path", ["/ws", "/ingest", "/twilio"])
async def test_websocket_routes_refuse_a_missing_or_wrong_token(path):
    async with protected() as server:
        url = f"ws://127.0.0.1:{server.port}{path}"
        for headers in (None, bearer(WRONG)):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers, open_timeout=TIMEOUT):
                    pass
            response = refused.value.response
            assert response.status_code == 401
            assert json.loads(bytes(response.body))["code"] == "unauthorized"
        for headers in (bearer(TOKEN), {"Cookie": f"emotion_monitor_token={TOKEN}"}):
            async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
                if path != "/twilio":  # /twilio waits for Twilio's first message
                    hello = await ws.recv()  # it shows the settings: not the token
                    assert json.loads(hello)["type"] == "hello" and TOKEN not in hello


async def test_audiohook_takes_the_token_as_its_api_key():
    """Genesys sends only X-API-KEY: without a key of its own /audiohook takes the token there."""
    async with protected() as server:
        url = f"ws://127.0.0.1:{server.port}/audiohook"
        for headers in (None, {"X-API-KEY": WRONG}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers, open_timeout=TIMEOUT):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(url, additional_headers={"X-API-KEY": TOKEN}) as ws:
            session = "5b4c2e6a-36f1-4b1c-9a47-6d2d4f3b9a10"
            await ws.send(json.dumps(simulators.audiohook_open(session, "conv-1")))
            assert json.loads(await ws.recv())["type"] == "opened"


async def test_the_token_is_never_logged(caplog):
    """Every logger at DEBUG (websockets traces each request line and header there) while
    requests carry the right token, a wrong one, and the token in query strings."""
    caplog.set_level(logging.DEBUG)
    raw = logging.getLogger("test_access.raw_client")
    async with protected() as server:
        base = f"127.0.0.1:{server.port}"
        for token in (TOKEN, WRONG):
            for target in ("/", f"/?token={token}", f"/metrics?t={token}", f"/x?token={token}"):
                await asyncio.to_thread(request, f"http://{base}{target}", bearer(token))
            await asyncio.to_thread(
                request, f"http://{base}/predict?token={token}", bearer(token), b"not audio"
            )
            cookie = {"Cookie": f"emotion_monitor_token={token}"}
            for target in (f"/ws?token={token}", f"/ingest?token={token}", "/ws"):
                with contextlib.suppress(InvalidStatus):
                    async with connect(
                        f"ws://{base}{target}", additional_headers=cookie, logger=raw
                    ) as ws:
                        await ws.recv()
        # the Python client, also with the token in its URL
        feed = subscribe(f"ws://{base}/ws?token={TOKEN}", types=("hello",), token=TOKEN)
        assert (await asyncio.wait_for(anext(feed), TIMEOUT))["type"] == "hello"
        await feed.aclose()
    # the trace of the raw `connect` calls above is this test's, not the project's
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != raw.name)
    assert "< GET /" in ours and "< Cookie: [redacted]" in ours  # the server did trace
    assert "> Authorization: [redacted]" in ours  # and so did the client
    assert TOKEN not in ours and WRONG not in ours


async def test_origin_allow_list():
    wall = "https://wall.example.org"
    access = Access(TOKEN, allowed_origins=(wall + "/",))
    async with protected(access) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        own = f"http://127.0.0.1:{server.port}"
        for origin in (own, wall, "https://WALL.example.org"):
            async with connect(url, origin=origin, additional_headers=bearer(TOKEN)) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
        for origin in ("https://evil.example.org", "http://wall.example.org", "null"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, origin=origin, additional_headers=bearer(TOKEN)):
                    pass
            assert refused.value.response.status_code == 403
    async with protected() as server:  # not configured: only the server's own origin
        with pytest.raises(InvalidStatus) as refused:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url, origin=wall, additional_headers=bearer(TOKEN)):
                pass
        assert refused.value.response.status_code == 403
    with pytest.raises(ValueError, match="scheme://host"):
        Access(TOKEN, allowed_origins=("wall.example.org",))


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography` (the test extra)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_tls_serves_https_and_wss(tmp_path, caplog):
    from emotion_monitor.streamer.server.access import tls_context

    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    async with protected(tls=tls_context(cert, key)) as server:
        assert server.url.startswith("https://")
        base = f"https://127.0.0.1:{server.port}"
        status, _, _ = await asyncio.to_thread(request, base + "/healthz", None, None, trust)
        assert status == 200
        status, _, _ = await asyncio.to_thread(request, base + "/metrics", None, None, trust)
        assert status == 401
        # a POST goes through the front door's own reader: it must work over TLS too
        status, _, body = await asyncio.to_thread(
            request,
            base + "/predict",
            {"Content-Type": "audio/wav", **bearer(TOKEN)},
            speech_wav(),
            trust,
        )
        assert status == 200 and json.loads(body)["results"], body
        feed = subscribe(
            f"wss://127.0.0.1:{server.port}/ws",
            types=("hello",),
            token=TOKEN,
            ssl=trust,
            reconnect=False,
        )
        hello = await asyncio.wait_for(anext(feed), TIMEOUT)
        assert hello["type"] == "hello"
        await feed.aclose()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            # the certificate is what a client checks (this one is not in the system's store)
            await asyncio.to_thread(
                request, base + "/healthz", None, None, ssl.create_default_context()
            )


async def test_client_subscribe_takes_the_token_and_fails_fast_without_it():
    customer, _ = clips()
    async with protected() as server:
        url = f"ws://127.0.0.1:{server.port}"
        with pytest.raises(InvalidStatus) as refused:  # reconnecting would not fix it
            await asyncio.wait_for(anext(subscribe(url, token=WRONG)), TIMEOUT)
        assert refused.value.response.status_code == 401
        feed = subscribe(url, streams=["call-1"], token=TOKEN, until_ended=True)
        first = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0)
        await asyncio.wait_for(_wait_clients(server, 1), TIMEOUT)
        server.service.open_stream("call-1", source="test")
        server.service.push("call-1", customer[: 4 * 16_000])
        server.service.end_stream("call-1")
        event = await asyncio.wait_for(first, TIMEOUT)
        assert event.stream == "call-1"
        await feed.aclose()


async def test_chatbot_example_follows_a_call_with_the_token_from_its_environment(
    monkeypatch, capsys
):
    path = Path(__file__).resolve().parents[1] / "examples" / "chatbot.py"
    spec = importlib.util.spec_from_file_location("chatbot", path)
    chatbot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chatbot)
    customer, _ = clips()
    async with protected() as server:
        argv = ["--server", f"ws://127.0.0.1:{server.port}", "--call", "call-7"]
        monkeypatch.delenv("EMOTION_MONITOR_TOKEN", raising=False)
        with pytest.raises(InvalidStatus):
            await asyncio.wait_for(chatbot.main(argv), TIMEOUT)
        monkeypatch.setenv("EMOTION_MONITOR_TOKEN", TOKEN)
        bot = asyncio.ensure_future(chatbot.main(argv))
        await asyncio.wait_for(_wait_clients(server, 1), TIMEOUT)
        server.service.open_stream("call-7", source="test")
        server.service.push("call-7", customer[: 4 * 16_000], track="customer")
        server.service.end_stream("call-7")
        assert await asyncio.wait_for(bot, TIMEOUT) == 0  # it stopped at the call's end
    assert "customer sounds" in capsys.readouterr().out


async def _wait_clients(server: Server, n: int) -> None:
    while server.clients < n:
        await asyncio.sleep(0.02)


# -- serve: what it refuses to expose ---------------------------------------------------------


def serve_refusal(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "EMOTION_MONITOR_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **(env or {})},
    )


def test_serve_refuses_a_public_address_without_a_token():
    done = serve_refusal("--host", "0.0.0.0")
    assert done.returncode == 2
    for flag in ("--token-file", "--token", "EMOTION_MONITOR_TOKEN", "--insecure"):
        assert flag in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--token", "short"), "at least 16 characters"),
        (("--host", "0.0.0.0", "--token", TOKEN, "--audiosocket-port", "0"), "AudioSocket"),
        (("--audiosocket-host", "0.0.0.0", "--audiosocket-port", "0"), "--audiosocket-host"),
        (("--tls-cert", "/nonexistent.pem", "--tls-key", "/none.pem"), "cannot load --tls-cert"),
        (("--token", TOKEN, "--token-file", "/nonexistent"), "not both"),
        (("--token-file", "/nonexistent/token"), "--token-file /nonexistent/token"),
        (("--tls-cert", "/nonexistent.pem"), "go together"),
        (("--allowed-origin", "wall.example.org"), "scheme://host"),
    ],
)
def test_serve_refuses_bad_access_flags(args, message):
    done = serve_refusal(*args)
    assert done.returncode == 2 and message in done.stderr
    assert TOKEN not in done.stderr


def test_serve_takes_the_token_from_its_environment(tmp_path):
    """The variable counts as a token: the public bind is allowed and the later failure (a
    missing model) is the next check, not the refusal."""
    env = {"EMOTION_MONITOR_TOKEN": TOKEN}
    done = serve_refusal("--host", "0.0.0.0", "--model", str(tmp_path / "none"), env=env)
    assert "refusing" not in done.stderr and "cannot load model" in done.stderr
    audiosocket = ("--audiosocket-port", "0", "--audiosocket-host", "127.0.0.1")
    done = serve_refusal("--host", "0.0.0.0", *audiosocket, "--model", "/none", env=env)
    assert "refusing" not in done.stderr and "cannot load model" in done.stderr
    done = serve_refusal("--host", "0.0.0.0", env={"EMOTION_MONITOR_TOKEN": "short"})
    assert done.returncode == 2 and "at least 16 characters" in done.stderr


def test_serve_with_a_token_file_and_tls(tiny_checkpoints, tmp_path):
    """`serve` as a user runs it: token from a file, https/wss from the TLS flags; nothing it
    prints holds the token, whatever the requests carried."""
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "emotion_monitor.streamer.cli", "serve", "--port", "0"]
        + ["--model", str(tiny_checkpoints["classifier"]), "--token-file", str(token_file)]
        + ["--tls-cert", cert, "--tls-key", key],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if "dashboard: " in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "".join(output)
        url = output[-1].split("dashboard: ", 1)[1].strip()
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=cert)
        assert request(url + "healthz", context=trust)[0] == 200
        assert request(url, bearer(TOKEN), context=trust)[0] == 200
        assert request(url, bearer(WRONG), context=trust)[0] == 401
        assert request(f"{url}?token={TOKEN}", context=trust)[0] == 401  # never in a URL
        wss = url.replace("https://", "wss://") + "ws"
        with sync_connect(wss, ssl=trust, additional_headers=bearer(TOKEN)) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "hello"
        with pytest.raises(InvalidStatus):
            with sync_connect(f"{wss}?token={TOKEN}", ssl=trust):
                pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(10)
    assert TOKEN not in "".join(output)
