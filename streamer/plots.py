"""Every figure the project draws (matplotlib, Agg backend, PNG): the timeline of one analysed
file (``analyze --plot``), the calls of a recording (``report --plot``) and the scores of a
model (``evaluate --plots``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from emotion_monitor.streamer.quadrant import NEUTRAL_RADIUS, SECTORS


def _pyplot():
    # lazy: matplotlib costs ~0.5 s to import; only the commands that draw need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    return plt


def plot_timeline(timeline: list[dict], summary: dict, out: str | Path, title: str = "") -> None:
    """Valence and arousal over time beside the circumplex (classes over time for class-only
    models, beside the label distribution); written as PNG with the Agg backend."""
    plt = _pyplot()

    speech = [e for e in timeline if e["speech"]]
    mid = np.array([(e["t0"] + e["t1"]) / 2 for e in speech])
    has_va = any(e["valence"] is not None for e in speech)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    if has_va:
        for key, colour in (("valence", "tab:blue"), ("arousal", "tab:red")):
            raw = np.array([e[key] for e in speech], dtype=float)
            smooth = np.array(
                [np.nan if e[key + "_smooth"] is None else e[key + "_smooth"] for e in speech],
                dtype=float,
            )
            ax.scatter(mid, raw, s=8, color=colour, alpha=0.35)
            ax.plot(mid, smooth, color=colour, label=f"{key} (smoothed)")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("value")
        # Circumplex as the dashboard draws it (app.js drawCircumplex): unit circle, NEUTRAL
        # disc, the eight 45-degree sector borders from the disc out, sector names. The points
        # are the smoothed valence/arousal, the values `quadrant` and time per quadrant use, so
        # a point lies in the region it was counted in (raw values can sit elsewhere).
        t = np.linspace(0, 2 * np.pi, 200)
        side.plot(np.cos(t), np.sin(t), color="0.7", lw=1)
        side.plot(NEUTRAL_RADIUS * np.cos(t), NEUTRAL_RADIUS * np.sin(t), color="0.7", lw=0.8)
        for a in np.radians(np.arange(0, 360, 45)):  # sector borders, from the disc out
            x, y = np.cos(a), np.sin(a)
            side.plot([NEUTRAL_RADIUS * x, x], [NEUTRAL_RADIUS * y, y], color="0.7", lw=0.8)
        for i, name in enumerate(SECTORS):
            a = np.radians(22.5 + 45 * i)
            side.text(
                0.82 * np.cos(a),
                0.82 * np.sin(a),
                name.lower(),
                ha="center",
                va="center",
                fontsize=7,
                color="0.4",
            )
        smooth_va = [e for e in speech if e["valence_smooth"] is not None]
        pts = side.scatter(
            [e["valence_smooth"] for e in smooth_va],
            [e["arousal_smooth"] for e in smooth_va],
            c=[(e["t0"] + e["t1"]) / 2 for e in smooth_va],
            cmap="viridis",
            s=14,
        )
        # after the points, on a pale box, so that points near the origin do not hide it
        side.text(
            0,
            0,
            "neutral",
            ha="center",
            va="center",
            fontsize=7,
            color="0.4",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )
        fig.colorbar(pts, ax=side, label="time (s)")
        side.set_xlim(-1.1, 1.1)
        side.set_ylim(-1.1, 1.1)
        side.set_aspect("equal")
        side.set_xlabel("valence")
        side.set_ylabel("arousal")
        side.set_title("circumplex\n(smoothed valence/arousal)", fontsize=10)
    else:
        labels = list(summary.get("mean_class_probabilities") or {})
        for lab in labels:
            ax.plot(mid, [e["classes"][lab] for e in speech], label=lab, lw=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        dist = summary.get("label_distribution") or {}
        side.barh(list(dist)[::-1], list(dist.values())[::-1], color="tab:purple")
        side.set_xlabel("share of speech time")
        side.set_title("dominant label")
    ax.set_xlim(0, max(summary.get("duration_s", 0.0), 1e-3))
    ax.set_xlabel("time (s)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "emotion timeline")
    fig.tight_layout()
    fig.savefig(str(out), dpi=100)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------


def plot_calls(calls: list[tuple[str, dict, list[float]]], out: str | Path) -> int:
    """Valence and arousal (smoothed) over stream time per track of each call, alerts as red
    lines (``calls``: see :func:`~emotion_monitor.streamer.recorder.call_timelines`).

    Returns the number of calls drawn.
    """
    if not calls:
        return 0
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(calls), 2, figsize=(12, 2.6 * len(calls)), squeeze=False, sharex="row"
    )
    for row, (stream, tracks, alerts) in zip(axes, calls, strict=True):
        for track, (t, v, a) in tracks.items():
            row[0].plot(t, v, label=track)
            row[1].plot(t, a, label=track)
        for t_alert in alerts:
            for ax in row:
                ax.axvline(t_alert, color="red", linestyle="--", linewidth=1)
        for ax, name in zip(row, ("valence", "arousal"), strict=True):
            ax.set_ylim(-1.05, 1.05)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_title(f"{stream}: {name}", fontsize=9)
            ax.set_xlabel("stream time (s)")
        row[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return len(calls)


def evaluation_plots(folder: Path, result: dict, true: list[str], va: list[tuple]) -> list[str]:
    """The figures of ``evaluate --plots`` in ``folder``: a row-normalised confusion matrix and
    valence/arousal by true label; returns the file names written."""
    plt = _pyplot()

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if result.get("confusion"):
        labels = result["confusion"]["labels"]
        cm = np.array(result["confusion"]["matrix"], float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 1 + 0.7 * len(labels)))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=8,
                )
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"UA {result['unweighted_accuracy']:.3f}, n={result['n']}")
        fig.tight_layout()
        path = folder / "confusion.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    pts = [(t, v, a) for t, (v, a) in zip(true, va, strict=True) if v is not None and a is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 6))
        for lab in sorted({t for t, _, _ in pts}):
            xs = [(v, a) for t, v, a in pts if t == lab]
            ax.scatter([p[0] for p in xs], [p[1] for p in xs], s=10, alpha=0.6, label=lab)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("valence")
        ax.set_ylabel("arousal")
        ax.legend(fontsize=8, markerscale=2)
        fig.tight_layout()
        path = folder / "valence_arousal.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written
