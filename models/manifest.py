"""Labelled audio manifests (CSV with ``path`` and ``emotion`` columns) and audio loading."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from emotion_monitor.models.base import ModelError


@dataclass(frozen=True)
class Row:
    """One labelled clip; ``path`` is resolved, optional columns are ``None`` when absent."""

    path: Path
    emotion: str
    speaker: str | None = None
    intensity: str | None = None
    split: str | None = None


def read_manifest(manifest: str | Path, root: str | Path | None = None) -> list[Row]:
    """Rows of a manifest; relative paths are taken from ``root`` or the manifest's folder."""
    manifest = Path(manifest)
    base = Path(root) if root else manifest.parent
    try:
        # utf-8-sig: spreadsheet programs save CSV with a byte-order mark
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            missing = {"path", "emotion"} - fields
            if missing:
                raise ModelError(f"{manifest}: missing column(s) {', '.join(sorted(missing))}")
            rows = []
            for r in reader:
                p = Path(r["path"])
                rows.append(
                    Row(
                        path=p if p.is_absolute() else base / p,
                        emotion=(r["emotion"] or "").strip().lower(),
                        speaker=r.get("speaker") or None,
                        intensity=r.get("intensity") or None,
                        split=r.get("split") or None,
                    )
                )
    except OSError as exc:
        raise ModelError(f"{manifest}: cannot read manifest ({exc})") from exc
    return rows
