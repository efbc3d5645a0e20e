"""One frozen settings object, built from CLI flags and an optional TOML file.

Every field is checked when a :class:`Settings` is built, whatever the values come from (flags,
TOML, code): a bad value fails at start-up with a message naming the field, the value and what is
allowed, instead of a hang or a traceback later. Alert rules are checked by
:mod:`emotion_monitor.streamer.alerts.rules`.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.alerts.rules import AlertRule, is_number, parse_alert_rules

#: Inference devices the model loaders accept (``models.load_model(device=...)``).
DEVICES = ("auto", "cpu", "cuda")

#: Allowed values of the numeric and URL fields of :class:`Settings`: field -> (the allowed
#: range in words, test of a value already of the field's type; it also sees the settings).
_RANGES: dict[str, tuple[str, Callable[[Any, Settings], bool]]] = {
    "window": ("in 0.1..30 s", lambda v, s: 0.1 <= v <= 30),
    # what the model loaders and `analyze --device` accept; without this entry a TOML typo
    # (device = "gpuu") passed here and only failed, or was silently overridden, much later
    "device": ("(auto, cpu or cuda)", lambda v, s: v in DEVICES),
    "hop": ("> 0 s and at most window", lambda v, s: 0 < v <= s.window),
    "smoothing_tau": (">= 0 s", lambda v, s: v >= 0),
    # 1 or more would make every window non-speech, 0 every window with any sound speech
    "vad_threshold": ("between 0 and 1 (exclusive)", lambda v, s: 0 < v < 1),
    "vad_min_speech_fraction": ("> 0 and <= 1", lambda v, s: 0 < v <= 1),
    "max_batch": (">= 1", lambda v, s: v >= 1),
    "max_streams": (">= 1", lambda v, s: v >= 1),
    "max_pending_windows": (">= 1", lambda v, s: v >= 1),
    "port": ("in 0..65535 (0: any free port)", lambda v, s: 0 <= v <= 65535),
    "max_clients": (">= 1", lambda v, s: v >= 1),
    "client_queue": (">= 1", lambda v, s: v >= 1),
    "max_message_bytes": (">= 1", lambda v, s: v >= 1),
    "ping_interval": ("> 0 s", lambda v, s: v > 0),
    "ping_timeout": ("> 0 s", lambda v, s: v > 0),
    "audiosocket_port": ("in 0..65535 (0: any free port)", lambda v, s: 0 <= v <= 65535),
    "webhook_url": (
        "starting with http:// or https://",
        lambda v, s: v.startswith(("http://", "https://")),
    ),
}

#: Field annotation -> (the type in words, test).
_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "float": ("a number", is_number),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple[AlertRule, ...]": (
        "alert rules",
        lambda v: isinstance(v, tuple) and all(isinstance(r, AlertRule) for r in v),
    ),
}


@dataclass(frozen=True)
class Settings:
    """Everything the engine, server and adapters are configured with. Read-only at run time.

    Raises ``ValueError`` naming the field, the value and the allowed range when a field has the
    wrong type or is out of range.
    """

    # windowing (seconds of stream time)
    window: float = 2.0
    hop: float = 0.5
    # exponential smoothing time constant of valence/arousal/class probabilities, seconds
    smoothing_tau: float = 2.0
    # voice activity gate: a window is speech when this fraction of its 32 ms frames is speech
    vad: bool = True
    vad_threshold: float = 0.5
    vad_min_speech_fraction: float = 0.2
    # model
    model: str | None = None
    device: str = "auto"
    # bounds
    max_batch: int = 32
    max_streams: int = 64
    # per (stream, track): audio waiting for analysis, in windows (hops of audio); a sender
    # past it is held back (/ingest) or loses its own audio (counted and reported)
    max_pending_windows: int = 64
    # server
    host: str = "127.0.0.1"
    port: int = 8765
    max_clients: int = 64
    client_queue: int = 256
    max_message_bytes: int = 1 << 20
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    audiosocket_port: int | None = None
    # outputs
    record: str | None = None
    webhook_url: str | None = None
    alerts: tuple[AlertRule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.type.removesuffix(" | None")
            if value is None and kind != f.type:
                continue
            what, is_kind = _TYPES[kind]
            allowed, in_range = _RANGES.get(f.name, ("", None))
            if not is_kind(value) or (in_range is not None and not in_range(value, self)):
                raise ValueError(
                    f"{f.name} must be {what}"
                    + (f" {allowed}" if allowed else "")
                    + f", got {value!r}"
                )

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (ignores ``None`` values, handy for CLI flags).

        A new window shorter than the unchanged hop is refused naming that hop and where it
        came from: ``--window 0.3`` alone reads "hop (default 0.5 s) must be at most window
        (0.3 s)", not a complaint about a 0.5 nobody typed.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        window = changes.get("window")
        window_ok = is_number(window) and _RANGES["window"][1](window, self)
        if "hop" not in changes and window_ok and self.hop > window:
            was = "default " if self.hop == Settings.hop else ""
            raise ValueError(
                f"hop ({was}{self.hop:g} s) must be at most window ({window:g} s); "
                "pass a hop too (--hop)"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able view, shown read-only by the server."""
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path, **flags) -> Settings:
        """Load settings from a TOML file; ``flags`` (command-line values, ``None`` ignored)
        replace the file's values before anything is checked, so a flag wins over the file.

        Raises ``ValueError`` starting with the file name for an unreadable file, a TOML syntax
        error, an unknown key (naming it), a bad value (see the class) or a bad ``[[alerts]]``
        table (see :meth:`AlertRule.from_dict`).
        """
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"{path}: cannot read settings ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"{path}: unknown settings {', '.join(unknown)}; valid: {', '.join(names)}"
            )
        flags = {k: v for k, v in flags.items() if v is not None}
        try:
            if "alerts" in data:
                data["alerts"] = parse_alert_rules(data["alerts"])
            return cls(**{**data, **flags})
        except ValueError as exc:
            where = f"{path} with the flags given" if flags else str(path)
            raise ValueError(f"{where}: {exc}") from None
