"""Alert rules: what may be compared, how rules are read from TOML, and the default rule.

Every rule is checked when it is built (a bad field, operator or value fails at start-up with a
message naming it) and again when it meets a model (:func:`fit_rules_to_model`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.protocol import Event

log = logging.getLogger(__name__)

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


def is_number(value: Any) -> bool:
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
            if not is_number(threshold):
                raise ValueError(f"{where}: {name} {op} needs a number, got {threshold!r}")
        if not is_number(self.min_duration) or self.min_duration < 0:
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


def load_alert_rules(path: str | Path) -> tuple[AlertRule, ...]:
    """Read ``[[alerts]]`` tables from a TOML file.

    Example (the default rule, :data:`~emotion_monitor.streamer.settings.CUSTOMER_FRUSTRATION`)::

        [[alerts]]
        name = "customer_frustration"
        track = ["customer", "main"]
        min_duration = 5.0
        conditions = { "classes_smooth.angry" = [">", 0.4] }

    A table's keys are ``name``, ``conditions``, ``min_duration`` and ``track``; a condition
    compares one of :data:`~emotion_monitor.streamer.settings.CONDITION_FIELDS`. Anything else
    (a misspelled key or field, an unknown operator) raises ``ValueError`` naming the file, the
    table and the valid names.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read alert rules ({exc})") from None
    unknown = sorted(set(data) - {"alerts"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; only [[alerts]] tables")
    try:
        rules = parse_alert_rules(data.get("alerts", []))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not rules:
        raise ValueError(f"{path}: no [[alerts]] tables found")
    return rules


#: Condition fields only a model with valence/arousal outputs fills.
VALENCE_AROUSAL_FIELDS = ("valence", "arousal", "valence_smooth", "arousal_smooth")


def fit_rules_to_model(rules: Iterable[AlertRule], model: Any) -> tuple[AlertRule, ...]:
    """The rules, checked against what ``model`` (an ``EmotionModel``) outputs.

    A rule comparing an output the model lacks would never fire, so it raises ``ValueError``
    naming the rule, the field and the model's outputs. The default rule is the exception: on a
    model without an angry class it becomes :data:`CUSTOMER_FRUSTRATION_VA`, and it is left out
    (with a warning) when the model has neither.
    """

    def lacks(rule: AlertRule) -> str | None:
        for name, _, _ in rule.conditions:
            group, dot, label = name.partition(".")
            if (dot and label not in model.labels) or (
                name in VALENCE_AROUSAL_FIELDS and not model.has_valence_arousal
            ):
                return name
        return None

    out = []
    for rule in rules:
        if rule == CUSTOMER_FRUSTRATION and lacks(rule):
            rule = CUSTOMER_FRUSTRATION_VA
            if lacks(rule):
                log.warning(
                    "model %s has no angry class nor valence/arousal: no default alert", model.name
                )
                continue
        missing = lacks(rule)
        if missing:
            raise ValueError(
                f"alert rule {rule.name!r} compares {missing}, which model {model.name} does not "
                f"output (its classes: {', '.join(model.labels) or 'none'}; valence/arousal: "
                f"{'yes' if model.has_valence_arousal else 'no'})"
            )
        out.append(rule)
    return tuple(out)
