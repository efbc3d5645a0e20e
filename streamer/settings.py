"""One frozen settings object, built from CLI flags and an optional TOML file.

Every field is checked when a :class:`Settings` or an :class:`AlertRule` is built, whatever the
values come from (flags, TOML, code): a bad value fails at start-up with a message naming the
field, the value and what is allowed, instead of a hang or a traceback later.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.events import Event

#: Comparison operators an alert condition may use.
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

#: Event fields an alert condition may compare: the numeric ones (``valence_smooth``, ...).
CONDITION_FIELDS = tuple(
    f.name for f in dataclasses.fields(Event) if f.type in ("int", "float", "float | None", "bool")
)
#: Per-class probabilities can be compared too, as "classes_smooth.angry" or "classes.angry".
CLASS_GROUPS = ("classes_smooth", "classes")


def is_condition_field(name: Any) -> bool:
    """A numeric event field, or ``GROUP.LABEL`` with a class probability group and a label.

    Which labels exist depends on the model (a published one may have ``positive``), so a label
    is checked when the rules meet a model (``alerts.fit_rules_to_model``): one the model lacks,
    a misspelling included, is refused there instead of never holding.
    """
    if not isinstance(name, str):
        return False
    group, dot, label = name.partition(".")
    return name in CONDITION_FIELDS or (dot == "." and group in CLASS_GROUPS and bool(label))


def condition_value(event: Mapping[str, Any], name: str) -> Any:
    """The value a condition field names in an event (``None`` when absent)."""
    group, dot, label = name.partition(".")
    if dot:
        return (event.get(group) or {}).get(label)
    return event.get(name)


def _is_number(value: Any) -> bool:
    """A finite int or float (``True`` is an int to Python, not a number to a user)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AlertRule:
    """Fire ``name`` when every condition holds on a track for at least ``min_duration`` seconds.

    Conditions compare numeric event fields (:data:`CONDITION_FIELDS`) or class probabilities
    (``"classes_smooth.angry"``, see :func:`is_condition_field`) with :data:`OPERATORS`, e.g.
    ``(("arousal_smooth", ">", 0.5),)``. ``track`` restricts the rule to one track (e.g.
    "customer") or to several (a tuple; a list in TOML); ``None`` means any track. Raises
    ``ValueError`` for an unknown field or operator (a misspelled field would otherwise never
    hold, so the alert would silently never fire).
    """

    name: str
    conditions: tuple[tuple[str, str, float], ...]
    min_duration: float = 5.0
    track: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"alert name must be a non-empty string, got {self.name!r}")
        where = f"alert {self.name!r}"
        if not self.conditions:
            raise ValueError(f"{where}: no conditions")
        for name, op, threshold in self.conditions:
            if not is_condition_field(name):
                raise ValueError(
                    f"{where}: unknown field {name!r}; conditions can compare "
                    + ", ".join(CONDITION_FIELDS)
                    + ", or a class probability as classes_smooth.LABEL / classes.LABEL"
                )
            if op not in OPERATORS:
                raise ValueError(
                    f"{where}: unknown operator {op!r} for {name}; use one of "
                    + " ".join(OPERATORS)
                )
            if not _is_number(threshold):
                raise ValueError(f"{where}: {name} {op} needs a number, got {threshold!r}")
        if not _is_number(self.min_duration) or self.min_duration < 0:
            raise ValueError(
                f"{where}: min_duration must be a number of seconds >= 0, got {self.min_duration!r}"
            )
        tracks = (self.track,) if isinstance(self.track, str) else self.track
        if tracks is not None and not (
            isinstance(tracks, tuple) and tracks and all(isinstance(t, str) for t in tracks)
        ):
            raise ValueError(
                f"{where}: track must be a string or a list of strings, got {self.track!r}"
            )

    def applies_to(self, track: Any) -> bool:
        """Whether the rule watches ``track``."""
        if self.track is None:
            return True
        return track == self.track if isinstance(self.track, str) else track in self.track

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> AlertRule:
        """A rule from one ``[[alerts]]`` TOML table (see :func:`alerts.load_alert_rules`).

        Keys: ``name``, ``conditions`` (``{field = [operator, number]}``), optional
        ``min_duration`` (default 5 s) and ``track``. Unknown keys are refused, listing these.
        """
        keys = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(keys))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(keys)}")
        missing = [k for k in ("name", "conditions") if k not in table]
        if missing:
            raise ValueError(f"missing {' and '.join(missing)}")
        conditions = table["conditions"]
        if not isinstance(conditions, Mapping):
            raise ValueError(
                'conditions must be a table such as { arousal_smooth = [">", 0.4] }, '
                f"got {conditions!r}"
            )
        parsed = []
        for name, spec in _flatten_groups(conditions).items():
            if not isinstance(spec, (list, tuple)) or len(spec) != 2:
                raise ValueError(f"condition {name} must be [operator, number], got {spec!r}")
            parsed.append((name, *spec))
        return cls(
            name=table["name"],
            conditions=tuple(parsed),
            min_duration=table.get("min_duration", 5.0),
            # TOML gives a list; the frozen rule keeps a tuple
            track=tuple(t) if isinstance(t := table.get("track"), list) else t,
        )


def _flatten_groups(conditions: Mapping[str, Any]) -> dict[str, Any]:
    """TOML reads the bare key ``classes_smooth.angry`` as a nested table: flatten it back."""
    flat: dict[str, Any] = {}
    for name, spec in conditions.items():
        if name in CLASS_GROUPS and isinstance(spec, Mapping):
            flat.update({f"{name}.{label}": v for label, v in spec.items()})
        else:
            flat[name] = spec
    return flat


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
    "float": ("a number", _is_number),
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
        window_ok = _is_number(window) and _RANGES["window"][1](window, self)
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


def parse_alert_rules(tables: Any) -> tuple[AlertRule, ...]:
    """Rules from parsed ``[[alerts]]`` TOML tables (:meth:`AlertRule.from_dict` each).

    Raises ``ValueError`` naming the table (``alerts[1]``) and the problem, a name used by an
    earlier table included.
    """
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise ValueError("alerts must be [[alerts]] tables")
    rules: list[AlertRule] = []
    for i, table in enumerate(tables):
        try:
            rule = AlertRule.from_dict(table)
        except ValueError as exc:
            raise ValueError(f"alerts[{i}] is malformed: {exc}") from None
        # The alert tracker keys its state (since when a rule holds, whether it fired) by name,
        # and alerts are told apart by name: two rules with one name would share that state.
        first = next((j for j, r in enumerate(rules) if r.name == rule.name), None)
        if first is not None:
            raise ValueError(
                f"alerts[{i}] is malformed: duplicate name {rule.name!r} (also alerts[{first}]); "
                "give each [[alerts]] table its own name"
            )
        rules.append(rule)
    return tuple(rules)


#: The default alert: a frustrated customer, read as a smoothed anger probability above 0.4 for
#: 5 s, on a call's customer track or the one track ("main") of a microphone, file or upload.
#: Chosen on the RAVDESS training actors with heads that never heard the actor scored (9
#: folds, each actor's clips of one emotion joined into a call): it fired on 18 of 18 angry calls
#: and none of 126 others, where the valence/arousal rule below fired on 15 of 18 and on 4 fear
#: calls. Thresholds 0.3-0.35 fired on a happy or disgusted call, 0.45-0.5 missed 4-6 angry ones.
CUSTOMER_FRUSTRATION = AlertRule(
    name="customer_frustration",
    conditions=(("classes_smooth.angry", ">", 0.4),),
    min_duration=5.0,
    track=("customer", "main"),
)

#: The default alert for a model without an angry class (valence/arousal only): high arousal and
#: negative valence for 5 s.
CUSTOMER_FRUSTRATION_VA = AlertRule(
    name="customer_frustration",
    conditions=(("arousal_smooth", ">", 0.4), ("valence_smooth", "<", -0.3)),
    min_duration=5.0,
    track=("customer", "main"),
)
