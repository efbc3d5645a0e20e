"""``emotion-monitor train``: fit the emotion heads on pooled encoder features.

Pipeline: manifest -> audio (+ deterministic augmentations) -> pooled multi-layer encoder
features, cached on disk per (encoder, input normalisation, augmentation, file content) ->
standardise -> shrinkage LDA or L2-regularised softmax regression (8 classes, temperature-
calibrated) and a valence/arousal head (derived targets: the class probabilities times each
class's mean target, or ridge regression, whichever cross-validates better) -> one ONNX graph
(scaler + both heads) and a JSON config. Everything is seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import EMOTIONS, ModelError
from emotion_monitor.models.training.augment import AUGMENTATIONS
from emotion_monitor.models.training.circumplex import (
    INTENSITY_SCALE,
    UNKNOWN_INTENSITY_SCALE,
    valence_arousal,
)
from emotion_monitor.models.training.feature_cache import PooledFeatures
from emotion_monitor.models.training.heads import (
    cell_weights,
    classifier_candidates,
    export_heads,
    train_heads,
    unweighted_accuracy,
)
from emotion_monitor.models.training.manifest import Row, read_manifest

# the repository's cache/ folder (ignored by git), as before the models/training/ split
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "cache"
#: the shipped default model's encoders and layers (see default/MODEL_CARD.md)
DEFAULT_ENCODER = "whisper-base+whisper-tiny"
DEFAULT_LAYERS = "2,3,4+1,2,3"
#: the labels a manifest may use: heads are trained on those of them its training rows hold
VOCABULARY: tuple[str, ...] = EMOTIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        required=True,
        action="append",
        help="CSV with path,emotion[,speaker,intensity,split,corpus]; repeat it to train on "
        "several corpora (a manifest without a corpus column is one corpus, named after it)",
    )
    p.add_argument("--root", help="folder the manifest paths are relative to (default: its folder)")
    p.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="whisper-base | whisper-tiny | several Whisper encoders joined by '+' | a "
        "wav2vec2-family hub id or local directory",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="hidden-state indices to pool (0 = embeddings), a comma list per encoder joined by "
        f"'+', or 'all' (default: {DEFAULT_LAYERS} for the default encoders, else all)",
    )
    p.add_argument(
        "--augment",
        default="clean,phone,noise,speech_only",
        help=f"augmentations of the training clips, comma-separated ({', '.join(AUGMENTATIONS)})",
    )
    p.add_argument(
        "--input-norm",
        default="rms",
        choices=("none", "rms"),
        help="per-window input normalisation before the encoder",
    )
    # defaults = the shipped default model's recipe (see default/MODEL_CARD.md)
    p.add_argument(
        "--classifier",
        default="lda",
        choices=("lda", "logistic"),
        help="class head: lda (shrinkage linear discriminant analysis) or logistic (L2 softmax "
        "regression)",
    )
    p.add_argument(
        "--shrinkage",
        default="0.9",
        help="candidate LDA shrinkages (default 0.9: chosen by leave-one-corpus-out, see the "
        "model card)",
    )
    p.add_argument("--C", default="0.01,0.03,0.1", help="candidate logistic inverse L2 strengths")
    p.add_argument(
        "--alpha",
        default="3000,10000,30000",
        help="candidate penalties of the valence/arousal ridge head (used when it "
        "cross-validates better than the class probabilities times each class's mean target)",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=9,
        help="cross-validation folds over the speakers: they choose among the candidates and "
        "calibrate the class probabilities (RAVDESS's 18 training actors: 2 held out per fold)",
    )
    p.add_argument(
        "--class-weight",
        default=None,
        choices=("cell", "balanced", "none"),
        help="cell (LDA only; its default): every corpus weighs the same and, within it, every "
        "class it has "
        "(a corpus without a class teaches nothing about it); balanced: every class weighs the "
        "same (in the loss, the LDA covariance and priors), as in unweighted accuracy (the "
        "logistic head's default); none: every clip weighs the same",
    )
    p.add_argument(
        "--out", default="artifacts/heads", help="output folder (heads.onnx + config.json)"
    )
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="embedding cache folder")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument(
        "--backend",
        default="ort-int8",
        choices=("torch", "ort-fp32", "ort-int8"),
        help="Whisper encoder backend used for the training features and recorded in "
        "config.json for serving on CPU",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the random augmentations and the fits"
    )
    p.add_argument(
        "--model-device",
        default="cpu",
        help="inference device of the torch encoders that compute the training features: cpu, "
        "cuda or auto (the ONNX backends run on the CPU)",
    )


def _numbers(flag: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ModelError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise ModelError(f"{flag} needs at least one value")
    return values


def select_rows(rows: Sequence[Row]) -> tuple[list[Row], list[Row], list[str]]:
    """(training rows, test rows, messages about the rows left out).

    Left out, each counted in a message: labels outside :data:`VOCABULARY` (listed with their
    counts), split values other than train / test / empty (case aside), and repeated files (the
    first row is kept; a file listed with two emotions is left out altogether).
    """
    notes: list[str] = []
    unknown = Counter(r.emotion for r in rows if r.emotion not in VOCABULARY)
    if unknown:
        listed = ", ".join(f"{label!r} ({n})" for label, n in sorted(unknown.items()))
        notes.append(
            f"left out {sum(unknown.values())} row(s) with labels outside the vocabulary "
            f"({', '.join(VOCABULARY)}; case does not matter): {listed}"
        )
    rows = [r for r in rows if r.emotion in VOCABULARY]
    # read_manifest lower-cases the split ("Train" / "TEST" from a spreadsheet mean what they
    # say); anything else (val, dev) is neither, and dropping it silently would shrink the
    # training set unnoticed
    other = Counter(r.split for r in rows if r.split not in (None, "train", "test"))
    if other:
        listed = ", ".join(f"{value!r} ({n})" for value, n in sorted(other.items()))
        notes.append(
            f"left out {sum(other.values())} row(s) whose split is neither train nor test "
            f"(training uses 'train' or an empty split, 'test' is scored at the end): {listed}"
        )
    rows = [r for r in rows if r.split in (None, "train", "test")]
    # the same file twice would count double (and in both splits, score the training data)
    by_file: dict[Path, list[Row]] = {}
    for r in rows:
        by_file.setdefault(Path(os.path.abspath(r.path)), []).append(r)
    kept = []
    for r in rows:
        same = by_file[Path(os.path.abspath(r.path))]
        lines = ", ".join(str(s.line) for s in same)
        if len({s.emotion for s in same}) > 1:
            if r is same[0]:
                labels = ", ".join(sorted({s.emotion for s in same}))
                notes.append(f"left out {r.path}: listed as {labels} (lines {lines})")
        elif r is same[0]:
            kept.append(r)
        else:
            notes.append(f"line {r.line}: {r.path}: repeats line {same[0].line}, counted once")
    train = [r for r in kept if r.split != "test"]
    test = [r for r in kept if r.split == "test"]
    return train, test, notes


def test_scores(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Clips, accuracy and unweighted accuracy (None, not NaN, when there is no clip)."""
    return {
        "clips": len(y),
        "accuracy": float(np.mean(pred == y)) if len(y) else None,
        "unweighted_accuracy": unweighted_accuracy(y, pred, n_classes) if len(y) else None,
    }


def _check_out(out: Path) -> None:
    """ModelError unless ``out`` is, or can become, a writable folder: found before the hours of
    embedding, not after (the folder itself is made only when there is something to write)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem:
        raise ModelError(f"--out {out}: cannot write the heads there ({problem})")


def _write_outputs(out: Path, heads: dict, config: dict) -> None:
    """heads.onnx and config.json, each written beside and then renamed over the old one, so
    a failure never leaves a folder whose config describes other heads."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp_heads, tmp_config = out / ".heads.onnx.tmp", out / ".config.json.tmp"
        export_heads(
            tmp_heads,
            heads["mean"],
            heads["std"],
            heads["w_cls"],
            heads["b_cls"],
            va_points=heads.get("va_points"),
            w_va=heads.get("w_va"),
            b_va=heads.get("b_va"),
        )
        tmp_config.write_text(json.dumps(config, indent=2) + "\n")
        tmp_heads.replace(out / "heads.onnx")
        tmp_config.replace(out / "config.json")
    except OSError as exc:
        raise ModelError(f"--out {out}: cannot write the heads ({exc})") from exc


def _line_number(problem: str) -> int:
    """The N of a ``"line N: ..."`` message (0 for other messages)."""
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def _class_counts(labels: Sequence[str], rows: Sequence[Row]) -> str:
    counts = Counter(r.emotion for r in rows)
    return ", ".join(f"{label} {counts[label]}" for label in labels)


def main(args: argparse.Namespace) -> int:
    import torch  # lazy: torch (keeps `emotion-monitor train --help` fast)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    problems: list[str] = []
    rows = [r for m in args.manifest for r in read_manifest(m, args.root, problems)]
    train, test, notes = select_rows(rows)
    # rows left out, for the closing summary: malformed ones and those select_rows dropped
    n_skipped = len(problems) + len(rows) - len(train) - len(test)
    for line in problems + notes:
        print(f"skipped: {line}")
    if not train:
        raise ModelError(
            f"{', '.join(args.manifest)}: no training rows (rows whose split column is 'test' "
            "are held out "
            "for the final scores; training uses rows with split 'train' or no split column)"
        )
    # parse the head options first: a typo must not cost an embedding run
    strengths = ("--shrinkage", args.shrinkage) if args.classifier == "lda" else ("--C", args.C)
    strength_values = _numbers(*strengths)
    classifier_candidates(args.classifier, strength_values)  # checks the values
    if args.class_weight is None:
        args.class_weight = "cell" if args.classifier == "lda" else "balanced"
    if args.class_weight == "cell" and args.classifier != "lda":
        raise ModelError("--class-weight cell needs --classifier lda; use balanced or none")
    alphas = _numbers("--alpha", args.alpha)
    if args.folds < 2:
        raise ModelError(f"--folds must be at least 2, got {args.folds}")
    augs = [a.strip() for a in args.augment.split(",") if a.strip()]
    unknown_augs = [a for a in augs if a not in AUGMENTATIONS]
    if unknown_augs:  # before any embedding runs
        raise ModelError(
            f"unknown augmentation(s) {', '.join(unknown_augs)}; use {', '.join(AUGMENTATIONS)}"
        )
    if "clean" not in augs:
        augs.insert(0, "clean")
    out = Path(args.out)
    _check_out(out)
    encoder = args.encoder
    if encoder not in ("whisper-base", "whisper-tiny") and Path(encoder).is_dir():
        # config.json must find the checkpoint from wherever the heads are served
        encoder = str(Path(encoder).resolve())
    cache = None if args.no_cache else Path(args.cache)
    t0 = time.time()
    layers = args.layers or (DEFAULT_LAYERS if encoder == DEFAULT_ENCODER else "all")
    features = PooledFeatures(encoder, layers, args.model_device, args.input_norm, args.backend)
    speakers = {r.speaker for r in train if r.speaker}
    print(
        f"training clips: {len(train)} "
        + (f"of {len(speakers)} speaker(s), " if speakers else "(no speakers given), ")
        + f"x {len(augs)} augmentation(s) ({', '.join(augs)}); test clips: {len(test)}"
    )
    feats, unusable = features.embed(train, augs, cache, args.seed)
    n_skipped += len(unusable)
    for p in sorted(unusable, key=_line_number):  # in manifest order, whichever step failed
        print(f"skipped: {p}")
    ok = ~np.isnan(feats["clean"]).any(1)
    if not ok.any():
        raise ModelError(
            f"none of the {len(train)} training clips could be read; relative paths are taken "
            "from the manifest's folder unless --root is given"
        )
    used = [r for r, good in zip(train, ok, strict=True) if good]
    # the heads predict the labels they have clips of, in the vocabulary's order
    labels = [label for label in VOCABULARY if any(r.emotion == label for r in used)]
    if len(labels) < 2:
        raise ModelError(
            f"the {len(used)} readable training clips hold one emotion only ({labels[0]}); "
            "a class head needs at least two"
        )
    print(f"training on {len(used)} clips: {_class_counts(labels, used)}")
    odd = Counter(
        r.intensity
        for r in used
        if r.intensity and r.intensity.strip().lower() not in INTENSITY_SCALE
    )
    if odd:  # the valence/arousal targets of these rows sit between normal and strong
        listed = ", ".join(f"{value!r} ({n})" for value, n in sorted(odd.items()))
        print(
            f"note: intensity values other than {', '.join(INTENSITY_SCALE)} get the unknown "
            f"intensity's scale ({UNKNOWN_INTENSITY_SCALE}) in the valence/arousal targets: "
            + listed
        )
    if any(not r.speaker for r in used):
        print(
            "note: clips without a speaker are each their own cross-validation group, so the CV "
            "figures and the calibration measure speakers seen in training, not new ones"
        )
    # within a corpus: corpora differ in size by design (the cell weights even that out)
    for corpus in sorted({r.corpus for r in used}):
        per_speaker = Counter(r.speaker for r in used if r.speaker and r.corpus == corpus)
        if len(per_speaker) > 1 and max(per_speaker.values()) > 4 * min(per_speaker.values()):
            # folds are dealt by speaker name, not size: a fold can hold almost nothing, and its
            # scores then drive the choice of the head and the temperature
            few = min(per_speaker, key=per_speaker.get)
            many = max(per_speaker, key=per_speaker.get)
            print(
                f"warning: speakers hold very different numbers of clips ({few}: "
                f"{per_speaker[few]}, {many}: {per_speaker[many]}); cross-validation folds are "
                "dealt by speaker, so the CV figures and the calibration can be unreliable"
            )
            break
    candidates = classifier_candidates(
        args.classifier,
        strength_values,
        args.seed,
        balanced=args.class_weight == "balanced",
        n_classes=len(labels),
    )
    x = np.concatenate([feats[a][ok] for a in augs])
    y = np.tile(np.array([labels.index(r.emotion) for r in used]), len(augs))
    va = np.tile(
        np.array([valence_arousal(r.emotion, r.intensity) for r in used], np.float32),
        (len(augs), 1),
    )
    # a speaker is named within its corpus: two corpora may both have a "speaker 1"
    speaker_ids = [f"{r.corpus}/{r.speaker}" if r.speaker else str(i) for i, r in enumerate(train)]
    groups = np.tile(np.array(speaker_ids)[ok], len(augs))
    corpora = np.tile(np.array([r.corpus for r in used]), len(augs))
    weights = cell_weights(y, corpora) if args.class_weight == "cell" else None
    heads = train_heads(x, y, va, groups, candidates, alphas, args.folds, weights, corpora)
    if heads["folds"]:
        cv = heads["cv"]
        ua = ", ".join(f"{n} {cv[f'ua_{n}']:.3f}" for n in candidates.names)
        ua += "".join(f"; {c} {cv[f'ua_{c}']:.3f}" for c in sorted(set(corpora)))
        mse = ", ".join(f"{k[7:]} {v:.3f}" for k, v in cv.items() if k.startswith("va_mse_"))
        groups_kind = "speakers" if speakers else "clips"
        print(
            f"cross-validation over {heads['folds']} folds of {groups_kind}: unweighted accuracy "
            f"{ua}; valence/arousal squared error {mse}"
        )
    print(
        f"chose {args.classifier} {heads['classifier']} (temperature {heads['temperature']:.3g}), "
        f"valence/arousal from {heads['va_head']}"
    )
    if not heads["folds"]:
        print(
            "warning: one speaker only, so nothing could be held out: the first candidates "
            "were taken untested and the probabilities are not calibrated (temperature 1)"
        )
    config = {
        "format": 1,
        "encoder": encoder,
        "backend": args.backend if encoder.startswith("whisper") else "torch",
        "layers": features.layers,
        "pooling": "mean+std over frames per layer",
        "input_norm": args.input_norm,
        "feature_dim": features.feature_dim,
        "labels": labels,
        "valence_arousal": "derived targets, see emotion_monitor.models.training.circumplex",
        "heads": "heads.onnx",
        "train": {
            "manifest": [str(m) for m in args.manifest],
            "clips": int(ok.sum()),
            "corpora": dict(sorted(Counter(r.corpus for r in used).items())),
            "augment": augs,
            "classifier": f"{args.classifier} {heads['classifier']}",
            "temperature": heads["temperature"],
            "valence_arousal_head": heads["va_head"],
            "class_weight": args.class_weight,
            "seed": args.seed,
            "folds": heads["folds"],
            "cv": heads["cv"],
        },
    }
    if test:
        untrained = Counter(r.emotion for r in test if r.emotion not in labels)
        if untrained:
            listed = ", ".join(f"{label} ({n})" for label, n in sorted(untrained.items()))
            print(f"skipped: test clips of emotions the heads were not trained on: {listed}")
            n_skipped += sum(untrained.values())
        test = [r for r in test if r.emotion in labels]
    if test:
        tf, test_problems = features.embed(test, ["clean"], cache)
        n_skipped += len(test_problems)
        for p in sorted(test_problems, key=_line_number):
            print(f"skipped (test): {p}")
        tok = ~np.isnan(tf["clean"]).any(1)
        xs = (tf["clean"][tok] - heads["mean"]) / heads["std"]
        yt = np.array([labels.index(r.emotion) for r in test])[tok]
        pred = (xs @ heads["w_cls"] + heads["b_cls"]).argmax(1)
        test_corpora = np.array([r.corpus for r in test])[tok]
        config["test"] = test_scores(yt, pred, len(labels))
        if len(set(test_corpora)) > 1:  # each corpus over its own classes
            config["test"]["corpora"] = {
                c: test_scores(yt[test_corpora == c], pred[test_corpora == c], len(labels))
                for c in sorted(set(test_corpora))
            }
        print(f"test split: {json.dumps(config['test'])}")
    _write_outputs(out, heads, config)
    print(
        f"wrote {out / 'heads.onnx'} and {out / 'config.json'} in {time.time() - t0:.0f} s: "
        f"labels {', '.join(labels)}; {len(used)} training clips"
        + (f", {n_skipped} row(s) skipped (listed above)" if n_skipped else "")
    )
    return 0
