"""Labelled audio manifests (CSV with ``path`` and ``emotion`` columns) and audio loading."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from emotion_monitor.models.base import ModelError


@dataclass(frozen=True)
class Row:
    """One labelled clip; ``path`` is resolved, optional columns are ``None`` when absent;
    ``emotion`` and ``split`` are lower case. ``line`` is the row's line in the manifest (for
    messages), ``None`` when not read from one."""

    path: Path
    emotion: str
    speaker: str | None = None
    intensity: str | None = None
    split: str | None = None
    line: int | None = None
    #: the corpus the clip belongs to: the manifest's ``corpus`` column, else the manifest's name
    corpus: str | None = None


def read_manifest(
    manifest: str | Path, root: str | Path | None = None, problems: list[str] | None = None
) -> list[Row]:
    """Rows of a manifest; relative paths are taken from ``root`` or the manifest's folder.

    Column names are matched without regard to case or surrounding spaces ("Path", " emotion").
    With a ``problems`` list, malformed rows (an empty path or emotion, more or fewer fields than
    the header) are left out and described there as ``"line N: ..."``; without one they are
    returned as they stand. ModelError when the file cannot be read, is not UTF-8 text or lacks
    the ``path`` / ``emotion`` columns.
    """
    manifest = Path(manifest)
    base = Path(root) if root else manifest.parent
    try:
        # utf-8-sig: spreadsheet programs save CSV with a byte-order mark
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            found = list(reader.fieldnames or ())
            # spreadsheets capitalise headers ("Path,Emotion"): the names are matched loosely
            reader.fieldnames = [name.strip().lower() for name in found]
            missing = {"path", "emotion"} - set(reader.fieldnames)
            if missing:
                raise ModelError(
                    f"{manifest}: missing column(s) {', '.join(sorted(missing))} "
                    f"(the header has {found}; columns are separated by commas)"
                )
            rows = []
            for r in reader:
                problem = _row_problem(r, len(found))
                if problem and problems is not None:
                    problems.append(f"{manifest}: line {reader.line_num}: {problem}")
                    continue
                p = Path((r["path"] or "").strip())
                rows.append(
                    Row(
                        path=p if p.is_absolute() else base / p,
                        emotion=(r["emotion"] or "").strip().lower(),
                        speaker=(r.get("speaker") or "").strip() or None,
                        intensity=r.get("intensity") or None,
                        # "Test" from a spreadsheet is the test split
                        split=(r.get("split") or "").strip().lower() or None,
                        line=reader.line_num,
                        corpus=(r.get("corpus") or "").strip() or corpus_name(manifest),
                    )
                )
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"{manifest}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 CSV"
        ) from exc
    except OSError as exc:
        raise ModelError(f"{manifest}: cannot read manifest ({exc})") from exc
    return rows


def corpus_name(manifest: str | Path) -> str:
    """The corpus a manifest without a ``corpus`` column holds: its folder's name when it is
    called ``manifest.csv`` (``.../nemo_16k/manifest.csv`` -> ``nemo_16k``), else its stem."""
    manifest = Path(manifest)
    return manifest.parent.name if manifest.stem == "manifest" else manifest.stem


def _row_problem(r: dict, n_columns: int) -> str | None:
    """Why a CSV row is unusable, or None."""
    # csv.DictReader puts surplus fields under the key None and fills missing ones with None
    extra = [v for v in r.get(None) or () if v.strip()]
    if extra:
        return (
            f"{n_columns + len(r[None])} fields, the header has {n_columns} "
            "(a comma inside a value that is not quoted?)"
        )
    if any(v is None for k, v in r.items() if k is not None):
        given = sum(v is not None for k, v in r.items() if k is not None)
        return f"{given} field(s), the header has {n_columns}"
    if not (r["path"] or "").strip():
        return "empty path"
    if not (r["emotion"] or "").strip():
        return "empty emotion"
    return None
