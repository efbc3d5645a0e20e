"""``emotion-monitor replay FILE.sqlite``: ``serve``, with a recording made by ``serve --record``
played back through it (see :mod:`emotion_monitor.streamer.replay`): a shift on the wall
(``/floor``) again, for a demo, a review or a load test (``--fanout``)."""

from __future__ import annotations

import argparse
import sqlite3
import sys

from emotion_monitor.streamer.commands import serve
from emotion_monitor.streamer.replay import MAX_FANOUT, Replay
from emotion_monitor.streamer.server.floor import HistoryRoute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor replay``: the recording, the pace and the fan-out, then every
    flag of ``serve``."""
    parser.add_argument("recording", help="SQLite file written by 'serve --record'")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="stream seconds replayed per second (default 1: the recorded pace)",
    )
    parser.add_argument(
        "--fanout",
        type=int,
        default=1,
        metavar="N",
        help=f"replay each call N times under ids <id>-1..<id>-N, spread over its length "
        f"(1..{MAX_FANOUT}; default 1). The server's max_streams (--config) bounds live calls",
    )
    parser.add_argument(
        "--loop", action="store_true", help="replay every call again after it ends, until stopped"
    )
    serve.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Serve and replay; exit codes as ``serve`` (2 also for a recording that cannot be read)."""
    try:
        replay = Replay(args.recording, args.speed, args.fanout, args.loop)
    except (FileNotFoundError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(
            f"replay: {args.recording}: not a recording ({exc}); replay reads the SQLite file "
            "that 'serve --record FILE.sqlite' writes",
            file=sys.stderr,
        )
        return 2

    async def run(server, service, settings) -> None:
        if not settings.record:  # the history of a replayed call comes from the recording
            server.add_http_route("GET", "/history", HistoryRoute(args.recording))
        calls = len(replay.calls) * replay.fanout
        print(
            f"replaying {calls} call(s) of {args.recording} at {replay.speed:g}x; "
            f"the wall: {server.url}floor",
            flush=True,
        )
        if calls > settings.max_streams:
            print(
                f"replay: warning: more calls than max_streams ({settings.max_streams}) may "
                "overlap; raise it with --config to replay them all",
                file=sys.stderr,
                flush=True,
            )
        await replay.run(service)
        print(
            f"replay finished: {replay.stats['calls_started']} call(s) replayed, "
            f"{replay.stats['calls_refused']} refused; still serving",
            flush=True,
        )

    return serve.main(args, background=run)
