"""One frozen settings object, built from CLI flags and an optional TOML file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tomllib


@dataclass(frozen=True)
class AlertRule:
    """Fire ``name`` when every condition holds on a track for at least ``min_duration`` seconds.

    Conditions compare smoothed event fields, e.g. ``{"arousal_smooth": (">", 0.5)}``.
    ``track`` restricts the rule to one track (e.g. "customer"); ``None`` means any track.
    """

    name: str
    conditions: tuple[tuple[str, str, float], ...]
    min_duration: float = 5.0
    track: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the engine, server and adapters are configured with. Read-only at run time."""

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
    max_pending_windows: int = 256
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
        if not 0.1 <= self.window <= 30:
            raise ValueError(f"window must be between 0.1 and 30 s, got {self.window}")
        if not 0 < self.hop <= self.window:
            raise ValueError(f"hop must be in (0, window], got {self.hop}")
        if self.smoothing_tau < 0:
            raise ValueError(f"smoothing_tau must be >= 0, got {self.smoothing_tau}")

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (ignores ``None`` values, handy for CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        """JSON-able view, shown read-only by the server."""
        return dataclasses.asdict(self)

    @classmethod
    def from_toml(cls, path: str | Path) -> Settings:
        """Load settings from a TOML file; unknown keys are an error naming them."""
        data = tomllib.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
        rules = tuple(
            AlertRule(
                name=r["name"],
                conditions=tuple((k, op, float(v)) for k, (op, v) in r["conditions"].items()),
                min_duration=float(r.get("min_duration", 5.0)),
                track=r.get("track"),
            )
            for r in data.pop("alerts", [])
        )
        return cls(**data, alerts=rules)


#: The default alert: a frustrated customer (high arousal, negative valence for 5 s). The arousal
#: threshold is 0.4 because the shipped heads put sustained strong anger at smoothed arousal
#: 0.45-0.7 (measured on RAVDESS test actors); 0.5 missed half of it.
CUSTOMER_FRUSTRATION = AlertRule(
    name="customer_frustration",
    conditions=(("arousal_smooth", ">", 0.4), ("valence_smooth", "<", -0.3)),
    min_duration=5.0,
    track="customer",
)
