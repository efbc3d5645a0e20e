"""``emotion-monitor evaluate``: score any model on a labelled manifest.

Clip-level by default (one ``predict`` per clip); with ``--streaming`` each clip goes through the
real streaming engine and its final smoothed estimate is scored. ``--labels`` restricts both the
prediction (argmax over that subset) and the scored clips. Missing or unreadable files and clips
whose label the model lacks are counted and reported, never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import ModelError, Prediction
from emotion_monitor.models.registry import load_model
from emotion_monitor.models.training.augment import augment
from emotion_monitor.models.training.circumplex import CIRCUMPLEX, sign, valence_arousal
from emotion_monitor.models.training.manifest import read_manifest
from emotion_monitor.streamer.decode import load_audio
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.plots import evaluation_plots
from emotion_monitor.streamer.settings import Settings
from tqdm import tqdm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV with path and emotion columns")
    p.add_argument("--root", help="folder the manifest paths are relative to (default: its folder)")
    p.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    p.add_argument("--labels", help="comma-separated subset to predict among and score")
    p.add_argument("--split", help="only rows whose split column equals this (e.g. test)")
    p.add_argument(
        "--channel",
        default="clean",
        choices=("clean", "noise", "phone", "phone_noise", "reverb", "speech_only", "short"),
        help="change the audio first (phone: 8 kHz mu-law round trip; noise: coloured noise "
        "and gain; phone_noise: noise, then the phone; reverb: a random room; speech_only: the "
        "clip's speech without the silence around it, repeated or cut to 2 s, i.e. continuous "
        "speech; short: 0.5-1 s of the clip's speech in a 2 s window of its background)",
    )
    p.add_argument("--json", help="write the metrics to this JSON file")
    p.add_argument("--plots", help="folder for confusion-matrix and valence/arousal PNGs")
    p.add_argument(
        "--streaming",
        action="store_true",
        help="score the final smoothed estimate of the streaming engine per clip",
    )
    p.add_argument("--batch", type=_positive_int, default=16, help="clips per predict call")
    p.add_argument(
        "--model-device",
        default="auto",
        help="inference device of the model: auto (CUDA when available), cpu or cuda",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def score(true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, unweighted accuracy (mean recall over classes present), macro F1 over labels
    present in truth or prediction, per-class figures and the confusion matrix (rows = truth)."""
    idx = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(true, pred, strict=True):
        cm[idx[t], idx[p]] += 1
    n = int(cm.sum())
    per_class, recalls, f1s = {}, [], []
    for i, lab in enumerate(labels):
        support, predicted, hit = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        prec = hit / predicted if predicted else 0.0
        rec = hit / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": support}
        if support:
            recalls.append(rec)
        if support or predicted:
            f1s.append(f1)
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else None,
        "unweighted_accuracy": float(np.mean(recalls)) if recalls else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "confusion": {"labels": list(labels), "matrix": cm.tolist()},
    }


def calibration(
    true: Sequence[str], preds: Sequence[Prediction], labels: Sequence[str], bins: int = 10
) -> dict:
    """How far the class probabilities can be taken at their word, over ``labels`` (each
    prediction renormalised over them): ``log_loss`` (mean -ln p(true label)) and
    ``calibration_error`` (expected calibration error: the gap between the top probability and
    the hit rate, averaged over ``bins`` equal-width confidence bins, weighted by clip count).
    None where the model gives no class probabilities."""
    if not true or any(not p.classes for p in preds):
        return {"log_loss": None, "calibration_error": None}
    probs = np.array([[p.classes.get(lab, 0.0) for lab in labels] for p in preds], np.float64)
    probs /= np.maximum(probs.sum(1, keepdims=True), 1e-12)
    truth = np.array([labels.index(t) for t in true])
    top = probs.max(1)
    hit = probs.argmax(1) == truth
    which = np.minimum((top * bins).astype(int), bins - 1)
    gap = sum(
        np.mean(which == b) * abs(hit[which == b].mean() - top[which == b].mean())
        for b in range(bins)
        if np.any(which == b)
    )
    return {
        "log_loss": float(-np.mean(np.log(np.maximum(probs[np.arange(len(truth)), truth], 1e-12)))),
        "calibration_error": float(gap),
    }


def _valence_arousal(pred: Prediction) -> tuple[float | None, float | None, str]:
    """The model's valence/arousal, or the probability-weighted circumplex point of its classes."""
    if pred.valence is not None and pred.arousal is not None:
        return pred.valence, pred.arousal, "model"
    if pred.classes:
        known = {k: p for k, p in pred.classes.items() if k in CIRCUMPLEX}
        total = sum(known.values())
        if total > 0:
            v = sum(p * CIRCUMPLEX[k][0] for k, p in known.items()) / total
            a = sum(p * CIRCUMPLEX[k][1] for k, p in known.items()) / total
            return v, a, "classes"
    return None, None, "none"


def binary_accuracy(true: Sequence[str], values: Sequence[float | None], axis: str) -> float | None:
    """Sign agreement between predicted valence/arousal and the label's circumplex side,
    over clips whose label has a side on that axis (neutral is left out)."""
    pairs = [
        (sign(t, axis), v)
        for t, v in zip(true, values, strict=True)
        if v is not None and t in CIRCUMPLEX
    ]
    pairs = [(s, v) for s, v in pairs if s != 0]
    if not pairs:
        return None
    return float(np.mean([(v > 0) == (s > 0) for s, v in pairs]))


def concordance(
    true: Sequence[str],
    intensities: Sequence[str | None],
    values: Sequence[float | None],
    axis: str,
) -> float | None:
    """Lin's concordance correlation between predicted values and the derived targets (each
    label's circumplex point scaled by its intensity), over clips whose label has a point.

    Unlike a correlation it also drops when predictions are shifted or squeezed toward the
    middle, which is what a fixed alert threshold feels."""
    k = 0 if axis == "valence" else 1
    pairs = [
        (valence_arousal(t, i)[k], v)
        for t, i, v in zip(true, intensities, values, strict=True)
        if v is not None and t in CIRCUMPLEX
    ]
    if len(pairs) < 2:
        return None
    target, pred = np.array(pairs, np.float64).T
    spread = target.var() + pred.var() + (target.mean() - pred.mean()) ** 2
    if spread == 0:
        return None
    return float(2 * np.mean((target - target.mean()) * (pred - pred.mean())) / spread)


def _stream_predict(model, clips: list[np.ndarray]) -> list[Prediction]:
    """Final smoothed estimate of the streaming engine for each clip (VAD off)."""

    out = []
    for k, x in enumerate(clips):
        eng = Engine(model, Settings(vad=False))
        events = eng.push(f"clip{k}", x) + eng.flush(f"clip{k}")
        last = next(
            (e for e in reversed(events) if e.classes_smooth or e.valence_smooth is not None), None
        )
        if last is None:
            out.append(Prediction())
        else:
            out.append(
                Prediction(
                    classes=last.classes_smooth,
                    valence=last.valence_smooth,
                    arousal=last.arousal_smooth,
                )
            )
    return out


def evaluate(
    model,
    manifest: str | Path,
    root: str | None = None,
    labels: Sequence[str] | None = None,
    split: str | None = None,
    streaming: bool = False,
    channel: str = "clean",
    batch: int = 16,
    progress: bool = True,
) -> tuple[dict, list[str], list[tuple]]:
    """Score ``model`` on a manifest; returns (metrics, true labels, (valence, arousal) pairs).

    Raises :class:`ModelError` when ``labels`` names labels the model does not have, or when
    ``split`` matches no row.
    """

    model_labels = tuple(model.labels)
    if labels:
        unknown = [lab for lab in labels if lab not in model_labels]
        if unknown:
            raise ModelError(
                f"label(s) {', '.join(unknown)} not predicted by {model.name}; "
                f"it knows: {', '.join(model_labels) or '(no classes)'}"
            )
    use = tuple(labels) if labels else model_labels
    # malformed rows (no path, too few fields) are reported with the unreadable files
    problems: list[str] = []
    rows = read_manifest(manifest, root, problems)
    if split:
        present = sorted({str(r.split) for r in rows})
        rows = [r for r in rows if r.split == split.strip().lower()]  # rows' splits: lower case
        if not rows:  # a typo must not pass as a score of nothing
            raise ModelError(
                f"{manifest}: no rows with split {split!r} (the split column holds: "
                f"{', '.join(present)})"
            )
    # a model without classes (valence/arousal only) scores every row: nothing is skipped
    skipped_labels = Counter(r.emotion for r in rows if r.emotion not in use) if use else Counter()
    rows = [r for r in rows if r.emotion in use] if use else rows
    true: list[str] = []
    intensities: list[str | None] = []
    preds: list[Prediction] = []
    bar = tqdm(total=len(rows), desc="evaluating", unit="clip", disable=not progress)
    for s in range(0, len(rows), batch):
        clips, kept = [], []
        for r in rows[s : s + batch]:
            try:
                x = load_audio(r.path)
                if x.size == 0:
                    raise ValueError("no samples")
            except Exception as exc:  # noqa: BLE001 - a bad row is reported, not fatal
                # load_audio's errors already name the file
                problems.append(str(exc) if str(r.path) in str(exc) else f"{r.path}: {exc}")
                continue
            clips.append(augment(x, channel))
            kept.append(r)
        if clips:
            preds += _stream_predict(model, clips) if streaming else model.predict(clips)
            true += [r.emotion for r in kept]
            intensities += [r.intensity for r in kept]
        bar.update(len(rows[s : s + batch]))
    bar.close()
    if use:
        chosen = []
        for p in preds:
            probs = p.classes or {}
            chosen.append(max(use, key=lambda lab: probs.get(lab, -1.0)))
        result = score(true, chosen, use)
        result.update(calibration(true, preds, list(use)))
    else:
        result = {
            "n": len(true),
            "accuracy": None,
            "unweighted_accuracy": None,
            "macro_f1": None,
            "log_loss": None,
            "calibration_error": None,
            "per_class": {},
            "confusion": None,
        }
    va = [_valence_arousal(p) for p in preds]
    result["arousal_binary_accuracy"] = binary_accuracy(true, [a for _, a, _ in va], "arousal")
    result["valence_binary_accuracy"] = binary_accuracy(true, [v for v, _, _ in va], "valence")
    for k, axis in enumerate(("valence", "arousal")):
        result[f"{axis}_ccc"] = concordance(true, intensities, [p[k] for p in va], axis)
    result["valence_arousal_source"] = va[0][2] if va else None
    result.update(
        model=model.describe(),
        manifest=str(manifest),
        labels=list(use),
        split=split,
        channel=channel,
        streaming=streaming,
        skipped_unreadable=len(problems),
        unreadable=problems[:50],
        skipped_other_labels=sum(skipped_labels.values()),
        other_labels=dict(skipped_labels),
    )
    return result, true, [(v, a) for v, a, _ in va]


def main(args: argparse.Namespace) -> int:

    labels = (
        [v.strip().lower() for v in args.labels.split(",") if v.strip()] if args.labels else None
    )
    if labels == []:
        print(f"error: --labels {args.labels!r} names no label", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, device=args.model_device)
        result, true, va = evaluate(
            model,
            args.manifest,
            args.root,
            labels,
            args.split,
            args.streaming,
            args.channel,
            args.batch,
        )
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in result["unreadable"]:
        print(f"unreadable: {p}", file=sys.stderr)
    if args.plots:
        result["plots"] = evaluation_plots(Path(args.plots), result, true, va)
    summary = {
        k: result[k]
        for k in (
            "n",
            "accuracy",
            "unweighted_accuracy",
            "macro_f1",
            "log_loss",
            "calibration_error",
            "arousal_binary_accuracy",
            "valence_binary_accuracy",
            "arousal_ccc",
            "valence_ccc",
            "skipped_unreadable",
            "skipped_other_labels",
        )
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if result["n"] == 0:  # a run that scored nothing must not pass for a result
        hint = ""
        if result["skipped_unreadable"]:
            hint = "; relative paths are taken from the manifest's folder unless --root is given"
        print(
            f"error: no clip was scored ({result['skipped_unreadable']} unreadable, "
            f"{result['skipped_other_labels']} with other labels){hint}",
            file=sys.stderr,
        )
        return 1
    return 0
