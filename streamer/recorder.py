"""Recording to SQLite (``serve --record FILE.sqlite``) and ``emotion-monitor report``.

The recorder is a service listener that only appends to a bounded queue; a writer thread of its
own drains the queue every ``interval`` seconds and writes the batch in one transaction (WAL
mode, so ``report`` can read while a server writes). Inference and the event loop never wait on
the disk. When the queue is full the oldest message is dropped and counted.

Tables: ``streams`` (one row per stream start, with its metadata and end time), ``events`` (every
event, the main fields as columns plus the full JSON) and ``alerts``; an event's or alert's
``call`` is the ``streams`` row it belongs to, so calls that reuse a stream id (an AudioHook
conversation after a transfer, a second Twilio ``<Stream>``) are reported apart.

``emotion-monitor report FILE.sqlite [--stream ID] [--plot OUT.png]`` prints, per call: its
length, per track the speech time, time per quadrant, mean and peak valence/arousal, the
dominant label, the alerts, and customer vs agent; ``--plot`` draws the smoothed timeline.
Speech time, time per quadrant and the dominant (smoothed) label are computed as ``analyze``
computes them (:class:`~emotion_monitor.streamer.analysis.SpeechTime`).
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.analysis import SpeechTime

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY, stream TEXT NOT NULL, started REAL, ended REAL, meta TEXT
);
CREATE TABLE IF NOT EXISTS events (
    stream TEXT NOT NULL, track TEXT NOT NULL, seq INTEGER, t0 REAL, t1 REAL, speech INTEGER,
    valence REAL, arousal REAL, valence_smooth REAL, arousal_smooth REAL,
    label TEXT, label_smooth TEXT, quadrant TEXT, latency_ms REAL, data TEXT, call INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_stream ON events (stream, track, seq);
CREATE TABLE IF NOT EXISTS alerts (
    stream TEXT NOT NULL, track TEXT, name TEXT, t REAL, since REAL, time REAL, data TEXT,
    call INTEGER
);
CREATE INDEX IF NOT EXISTS streams_by_id ON streams (stream, id);
"""
EVENT_COLUMNS = (
    "stream",
    "track",
    "seq",
    "t0",
    "t1",
    "speech",
    "valence",
    "arousal",
    "valence_smooth",
    "arousal_smooth",
    "label",
    "label_smooth",
    "quadrant",
    "latency_ms",
)


class Recorder:
    """Writes every event, alert and stream start/end to a SQLite file, off the event loop.

    Args:
        path: the database file (created if missing; appended to otherwise).
        interval: seconds between batched writes.
        queue_size: messages held before the oldest are dropped (``stats["dropped"]``).
    """

    def __init__(self, path: str | Path, interval: float = 0.25, queue_size: int = 200_000):
        self.path = Path(path)
        self.interval = interval
        self._queue: collections.deque = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._closing = False
        self.stats = {"written": 0, "dropped": 0, "batches": 0}
        self._queued = self._handled = 0  # totals, so flush can wait for its own messages
        # Open once here so a bad path fails at start-up, not silently in the thread.
        self._db = _connect(self.path, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def listener(self, messages: list[dict]) -> None:
        """Service listener (any thread): queue the messages and return at once."""
        with self._cond:
            for msg in messages:
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    self.stats["dropped"] += 1
                self._queue.append(msg)
                self._queued += 1

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written."""
        with self._cond:
            target = self._queued
            self._cond.notify()
            self._cond.wait_for(lambda: self._handled >= target, timeout)

    def close(self) -> None:
        """Write what is queued and close the file (idempotent)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closing:
                    self._cond.wait(self.interval)
                batch = list(self._queue)
                self._queue.clear()
                closing = self._closing
                handled = self._queued
            if batch:
                try:
                    self._write(batch)
                except sqlite3.Error:
                    log.exception(
                        "recorder: could not write %d messages to %s", len(batch), self.path
                    )
            with self._cond:
                self._handled = handled
                self._cond.notify_all()
            if closing:
                self._db.close()
                return

    def _write(self, batch: list[dict]) -> None:
        events, alerts = [], []
        with self._db:  # one transaction per batch
            for msg in batch:
                kind = msg.get("type")
                if kind == "event":
                    events.append(
                        tuple(_column(msg.get(c)) for c in EVENT_COLUMNS)
                        + (json.dumps(msg), self._call(msg.get("stream")))
                    )
                elif kind == "alert":
                    alerts.append(
                        (
                            msg.get("stream"),
                            msg.get("track"),
                            msg.get("name"),
                            msg.get("t"),
                            msg.get("since"),
                            msg.get("time"),
                            json.dumps(msg),
                            self._call(msg.get("stream")),
                        )
                    )
                elif kind == "stream_started":
                    self._db.execute(
                        "INSERT INTO streams (stream, started, meta) VALUES (?, ?, ?)",
                        (msg.get("stream"), msg.get("time"), json.dumps(msg.get("meta") or {})),
                    )
                elif kind == "stream_ended":
                    self._db.execute(
                        "UPDATE streams SET ended = ? WHERE id = (SELECT MAX(id) FROM streams "
                        "WHERE stream = ?)",
                        (msg.get("time"), msg.get("stream")),
                    )
            names = ", ".join((*EVENT_COLUMNS, "data", "call"))
            marks = ",".join("?" * (len(EVENT_COLUMNS) + 2))
            self._db.executemany(f"INSERT INTO events ({names}) VALUES ({marks})", events)
            self._db.executemany(
                "INSERT INTO alerts (stream, track, name, t, since, time, data, call) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                alerts,
            )
        self.stats["written"] += len(batch)
        self.stats["batches"] += 1

    def _call(self, stream: str | None) -> int | None:
        """The ``streams`` row of the latest start of ``stream`` (an alert may come after
        its stream ended; the same id cannot start again before it has ended)."""
        row = self._db.execute("SELECT MAX(id) FROM streams WHERE stream = ?", (stream,))
        return row.fetchone()[0]


def _column(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _connect(path: Path, **kwargs: Any) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), **kwargs)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast
    db.executescript(SCHEMA)
    for table in _without_call_column(db):  # recordings made before the column existed
        db.execute(f"ALTER TABLE {table} ADD COLUMN call INTEGER")
    return db


def _without_call_column(db: sqlite3.Connection) -> list[str]:
    """Which of the events and alerts tables lack the ``call`` column (older recordings)."""
    return [
        table
        for table in ("events", "alerts")
        if "call" not in {row[1] for row in db.execute(f"PRAGMA main.table_info({table})")}
    ]


# -- report ----------------------------------------------------------------------------------


def summarize(path: str | Path, stream: str | None = None) -> list[dict]:
    """Per-call summaries from a recording (see the module docstring for what is in them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such recording")
    db = _open_recording(path)
    db.row_factory = sqlite3.Row
    try:
        out = []
        for s, call in _calls(db, stream):
            meta_row = db.execute(
                "SELECT started, ended, meta FROM streams WHERE stream = ?1 "
                "AND (id = ?2 OR ?2 IS NULL) ORDER BY id DESC",
                (s, call),
            ).fetchone()
            events = db.execute(
                f"SELECT * FROM events WHERE {_OF_CALL} ORDER BY track, seq", (s, call)
            ).fetchall()
            alerts = [
                dict(r)
                for r in db.execute(
                    f"SELECT track, name, t, since FROM alerts WHERE {_OF_CALL} ORDER BY t",
                    (s, call),
                )
            ]
            out.append(_summarize_stream(s, meta_row, events, alerts))
        return out
    finally:
        db.close()


#: The rows of one call: its ``call`` id, or (recordings made before the column) its stream id.
_OF_CALL = "stream = ? AND call IS ?"


def _open_recording(path: Path) -> sqlite3.Connection:
    """Read-only; a recording made before the ``call`` column reads as if it were all NULL."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table in _without_call_column(db):
            # temp objects shadow main ones; the temp schema is writable in read-only mode
            db.execute(f"CREATE TEMP VIEW {table} AS SELECT *, NULL AS call FROM main.{table}")
    except sqlite3.Error:
        db.close()
        raise
    return db


def _calls(db: sqlite3.Connection, stream: str | None) -> list[tuple[str, int | None]]:
    """(stream id, ``streams`` row) of every recorded call with events, in order."""
    rows = db.execute(
        "SELECT stream, call FROM events GROUP BY stream, call ORDER BY MIN(rowid)"
    ).fetchall()
    return [(r[0], r[1]) for r in rows if stream is None or r[0] == stream]


def _summarize_stream(stream: str, meta_row, events, alerts) -> dict:
    tracks: dict[str, list] = collections.defaultdict(list)
    for e in events:
        tracks[e["track"]].append(e)
    summary = {
        "stream": stream,
        "meta": json.loads(meta_row["meta"]) if meta_row and meta_row["meta"] else {},
        # wall-clock seconds; ``ended`` is None while the call lasts (or if the server died)
        "started": meta_row["started"] if meta_row else None,
        "ended": meta_row["ended"] if meta_row else None,
        "duration": max((e["t1"] for e in events), default=0.0),
        "tracks": {},
        "alerts": alerts,
    }
    for track, evs in tracks.items():
        time = SpeechTime()
        for e in evs:
            time.add(e)
        speech = [e for e in evs if e["speech"] and e["valence_smooth"] is not None]
        t = {
            "events": len(evs),
            "speech_s": round(time.total, 2),
            "quadrants_s": {k: round(v, 2) for k, v in time.per_quadrant.most_common()},
            "label": time.per_label.most_common(1)[0][0] if time.per_label else None,
        }
        if speech:
            t["valence_mean"] = round(sum(e["valence_smooth"] for e in speech) / len(speech), 3)
            t["arousal_mean"] = round(sum(e["arousal_smooth"] for e in speech) / len(speech), 3)
            hi = max(speech, key=lambda e: e["arousal_smooth"])
            lo = min(speech, key=lambda e: e["valence_smooth"])
            t["arousal_peak"] = {"value": round(hi["arousal_smooth"], 3), "t": hi["t1"]}
            t["valence_low"] = {"value": round(lo["valence_smooth"], 3), "t": lo["t1"]}
        summary["tracks"][track] = t
    return summary


def call_timelines(
    path: str | Path, stream: str | None = None, max_calls: int = 8
) -> list[tuple[str, dict[str, tuple[list, list, list]], list[float]]]:
    """Per call (at most ``max_calls``): its stream id, per track the smoothed (t, valence,
    arousal) points of its speech, and the times of its alerts (for ``report --plot``)."""
    db = _open_recording(Path(path))
    try:
        out = []
        for s, call in _calls(db, stream)[:max_calls]:
            tracks = {}
            for (track,) in db.execute(
                f"SELECT DISTINCT track FROM events WHERE {_OF_CALL} ORDER BY track", (s, call)
            ).fetchall():
                pts = db.execute(
                    f"SELECT t1, valence_smooth, arousal_smooth FROM events WHERE {_OF_CALL} "
                    "AND track = ? AND valence_smooth IS NOT NULL ORDER BY seq",
                    (s, call, track),
                ).fetchall()
                if pts:
                    t, v, a = (list(x) for x in zip(*pts, strict=True))
                    tracks[track] = (t, v, a)
            alerts = [t for (t,) in db.execute(f"SELECT t FROM alerts WHERE {_OF_CALL}", (s, call))]
            out.append((s, tracks, alerts))
        return out
    finally:
        db.close()


# -- reading calls back (replay, the history of a call) -------------------------------------


def recorded_calls(path: str | Path) -> list[dict]:
    """Every recorded call with events, in order: ``stream``, ``call`` (its ``streams`` row),
    ``meta``, ``started`` and ``ended`` (wall-clock seconds, ``ended`` None while it lasts) and
    ``length`` (stream time of its last event). Events stay on disk: :func:`call_events`.

    Raises ``FileNotFoundError`` and ``sqlite3.Error`` (not a recording) like :func:`summarize`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such recording")
    db = _open_recording(path)
    try:
        out = []
        for s, call in _calls(db, None):
            row = db.execute(
                "SELECT started, ended, meta FROM streams WHERE stream = ?1 "
                "AND (id = ?2 OR ?2 IS NULL) ORDER BY id DESC",
                (s, call),
            ).fetchone()
            sql = f"SELECT MAX(t1) FROM events WHERE {_OF_CALL}"
            length = db.execute(sql, (s, call)).fetchone()[0]
            started, ended, meta = row if row else (None, None, None)
            out.append(
                {
                    "stream": s,
                    "call": call,
                    "meta": json.loads(meta) if meta else {},
                    "started": started,
                    "ended": ended,
                    "length": length or 0.0,
                }
            )
        return out
    finally:
        db.close()


def call_events(path: str | Path, stream: str, call: int | None) -> list[dict]:
    """The events of one recorded call (see :func:`recorded_calls`) as they were sent, in
    stream order (by window end, the order they were made in)."""
    db = _open_recording(Path(path))
    try:
        rows = db.execute(
            f"SELECT data FROM events WHERE {_OF_CALL} ORDER BY t1, track, seq", (stream, call)
        )
        return [json.loads(data) for (data,) in rows]
    finally:
        db.close()
