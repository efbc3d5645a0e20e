"""Every figure the models side draws (``evaluate --plots``), in one place: matplotlib is imported
here only, lazily, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluation_plots(folder: Path, result: dict, true: list[str], va: list[tuple]) -> list[str]:
    import matplotlib  # lazy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib

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
