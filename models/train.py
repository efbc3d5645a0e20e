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
import functools
import hashlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emotion_monitor.models.augment import AUGMENTATIONS, RANDOM_AUGMENTATIONS, augment
from emotion_monitor.models.base import EMOTIONS, ModelError
from emotion_monitor.models.embedding import MIN_SAMPLES, layer_columns
from emotion_monitor.models.manifest import Row, read_manifest
from emotion_monitor.streamer.audio import load_audio

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "cache"
#: the shipped default model's encoders and layers (see default/MODEL_CARD.md)
DEFAULT_ENCODER = "whisper-base+whisper-tiny"
DEFAULT_LAYERS = "2,3,4+1,2,3"
CLASSES: tuple[str, ...] = EMOTIONS[:8]
#: the labels a manifest may use: heads are trained on those of them its training rows hold
VOCABULARY: tuple[str, ...] = EMOTIONS


# --------------------------------------------------------------------------- encoders


def make_embedder(
    encoder: str, device: str = "cpu", input_norm: str = "none", layers=None, backend: str = "torch"
):
    """An embedder (``.name``, ``.feature_dim``, ``.layers``, ``.embed(windows)``) for a spec:
    ``whisper-base``, ``whisper-tiny`` or a wav2vec2-family hub id / local directory.
    ``backend`` "ort-int8" / "ort-fp32" computes Whisper features with the ONNX encoder."""
    if encoder in ("whisper-base", "whisper-tiny") and backend != "torch":
        from emotion_monitor.models.embedding import WhisperOrtEmbedder

        return WhisperOrtEmbedder(encoder, layers=layers, backend=backend, input_norm=input_norm)
    if encoder in ("whisper-base", "whisper-tiny"):
        from emotion_monitor.models.embedding import WhisperTorchEmbedder

        return WhisperTorchEmbedder(encoder, layers=layers, device=device, input_norm=input_norm)
    if encoder.startswith("whisper"):  # else it would be looked up as a hub id, in vain
        raise ModelError(f"unknown Whisper encoder {encoder!r}; use whisper-base or whisper-tiny")
    from emotion_monitor.models.wav2vec2_encoder import Wav2Vec2Embedder

    return Wav2Vec2Embedder(encoder, layers=layers, device=device, input_norm=input_norm)


class PooledFeatures:
    """Training features for an encoder spec: one encoder or several joined by ``+`` (their
    features concatenated in order, as ``PooledWhisper`` computes them at serving time).

    ``layers`` is ``"all"`` or one comma list per encoder joined by ``+`` ("2,3,4+1,2,3"). Each
    encoder's cache holds every layer; the chosen ones are sliced out afterwards, so trying another
    layer selection never re-runs an encoder.
    """

    def __init__(self, encoder: str, layers: str, device: str, input_norm: str, backend: str):
        names = encoder.split("+")
        if len(names) > 1 and not all(n.startswith("whisper") for n in names):
            raise ModelError(f"only Whisper encoders can be joined with '+', got {encoder!r}")
        groups = [g.strip() for g in layers.split("+")]
        if groups == ["all"]:
            groups = ["all"] * len(names)
        if len(groups) != len(names):
            raise ModelError(
                f"--layers {layers!r} has {len(groups)} group(s) for {len(names)} encoder(s) "
                f"in {encoder!r}; give one comma list per encoder, joined by '+'"
            )
        # Heads are trained on the features of the backend that will serve them (the int8
        # encoder shifts features a little; training on them recovers the accuracy that costs).
        self.parts = []
        for name, group in zip(names, groups, strict=True):
            embedder = make_embedder(name, device, input_norm, None, backend)
            chosen = embedder.layers if group == "all" else [int(v) for v in group.split(",")]
            cols = layer_columns(embedder.layers, chosen, embedder.dim)
            self.parts.append((embedder, chosen, cols))
        chosen_layers = [list(chosen) for _, chosen, _ in self.parts]
        #: as written to config.json: a flat list for one encoder, one list per encoder otherwise
        self.layers = chosen_layers[0] if len(chosen_layers) == 1 else chosen_layers
        self.feature_dim = int(sum(len(cols) for _, _, cols in self.parts))

    def embed(self, rows, augs, cache, seed: int = 0) -> tuple[dict[str, np.ndarray], list[str]]:
        """Features (n_rows, feature_dim) per augmentation, and the unreadable-file messages."""
        # each file is read and hashed once for all encoders' cache keys
        digests, problems = content_digests(rows) if cache else (None, [])
        per_part = []
        for embedder, _, cols in self.parts:
            feats, probs = embed_rows(rows, embedder, augs, cache, seed=seed, digests=digests)
            per_part.append({a: f[:, cols] for a, f in feats.items()})
            problems += [p for p in probs if p not in problems]
        return {a: np.concatenate([f[a] for f in per_part], axis=1) for a in augs}, problems


def _cache_file(cache: Path, embedder, digest: str, aug: str, seed: int) -> Path:
    # v3: keyed by the file's content, so the cache survives copying the data to another machine
    # or folder (v2 keyed by path and mtime; v1 also seeded the augmentations from the path)
    key = f"v3|{digest}"
    if aug in RANDOM_AUGMENTATIONS:
        key += f"|seed={seed}"
    fingerprint = checkpoint_fingerprint(embedder.name)
    if fingerprint:  # a local checkpoint folder: other weights saved there give other features
        key += f"|weights={fingerprint}"
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder.name)[-60:]
    layer_tag = "-".join(map(str, embedder.layers))
    folder = cache / "embeddings" / f"{slug}_{embedder.input_norm}_L{layer_tag}" / aug
    return folder / (hashlib.sha1(key.encode()).hexdigest() + ".npy")


def checkpoint_fingerprint(encoder: str) -> str:
    """SHA-1 of the files of a local checkpoint folder (names and contents), "" when ``encoder``
    is not a folder (a Whisper name, a hub id).

    The embedding cache is keyed by encoder name; for a folder the name says nothing about the
    weights in it (a fine-tuned model saved over the old one), so the contents go in the key."""
    folder = Path(encoder)
    if not folder.is_dir():
        return ""
    files = sorted(f for f in folder.iterdir() if f.is_file())
    # hashed again only when a file's size or time changes (this runs once per cached clip)
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(str(folder.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _hash_files(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha1()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def row_problem(row: Row, reason: object) -> str:
    """``"line N: PATH: reason"`` for a clip that cannot be used; ``reason`` may be an exception
    (its own copies of the path are dropped: the message names the file once)."""
    if isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason).replace(f"{row.path}: ", "")
    where = f"line {row.line}: " if row.line else ""
    return f"{where}{row.path}: {text}"


def audio_problem(x: np.ndarray) -> str | None:
    """Why decoded audio cannot be a training clip (no samples, shorter than the encoders'
    minimum window, digital silence), or None."""
    if x.size == 0:
        return "no audio samples"
    if x.size < MIN_SAMPLES:
        return f"only {1000 * x.size / 16000:.0f} ms of audio (at least {MIN_SAMPLES // 16} ms)"
    if not np.any(np.nan_to_num(x)):
        return "silent (every sample is 0)"
    return None


def content_digests(rows: Sequence[Row]) -> tuple[list[str | None], list[str]]:
    """Each row's file content hash (the embedding cache key), None where the file cannot be
    read, and a message for each of those."""
    digests: list[str | None] = []
    problems: list[str] = []
    for row in rows:
        try:
            digests.append(hashlib.sha1(row.path.read_bytes()).hexdigest())
        except OSError as exc:
            digests.append(None)
            problems.append(row_problem(row, exc))
    return digests, problems


def embed_rows(
    rows: Sequence[Row],
    embedder,
    augs: Sequence[str],
    cache: Path | None,
    batch: int = 8,
    progress: bool = True,
    seed: int = 0,
    digests: Sequence[str | None] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Features (n_rows, feature_dim) per augmentation, cached on disk; rows whose audio cannot
    be read or hold no usable audio (:func:`audio_problem`) get NaN features and a message in
    the returned problem list. ``seed`` picks the random augmentations' draws; ``digests`` are
    the rows' :func:`content_digests` when the caller already has them (their unreadable rows
    are then the caller's to report)."""
    from tqdm import tqdm

    feats = {a: np.full((len(rows), embedder.feature_dim), np.nan, np.float32) for a in augs}
    problems: list[str] = []
    if cache and digests is None:
        digests, problems = content_digests(rows)
    todo: list[tuple[int, str, Path | None]] = []
    for i in range(len(rows)):
        if cache and digests[i] is None:
            continue  # unreadable
        for a in augs:
            f = _cache_file(cache, embedder, digests[i], a, seed) if cache else None
            if f is not None and f.exists():
                feats[a][i] = np.load(f, allow_pickle=False)
            else:
                todo.append((i, a, f))
    bar = tqdm(
        total=len(todo),
        desc=f"embedding ({embedder.name})",
        unit="clip",
        disable=not progress or not todo,
    )
    audio_cache: dict[int, np.ndarray | None] = {}
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        windows, keep = [], []
        for i, a, f in chunk:
            if i not in audio_cache:
                audio_cache.clear()  # todo is ordered by row, so one row's audio is enough
                try:
                    audio_cache[i] = load_audio(rows[i].path)
                    # an empty or silent file would train the heads on padding labelled as speech
                    bad = audio_problem(audio_cache[i])
                except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
                    bad = exc
                if bad is not None:
                    audio_cache[i] = None
                    problems.append(row_problem(rows[i], bad))
            x = audio_cache[i]
            if x is not None:
                windows.append(augment(x, a, seed))
                keep.append((i, a, f))
        if windows:
            out = embedder.embed(windows)
            for (i, a, f), v in zip(keep, out, strict=True):
                feats[a][i] = v
                if f is not None:
                    f.parent.mkdir(parents=True, exist_ok=True)
                    tmp = f.with_suffix(".tmp.npy")
                    np.save(tmp, v, allow_pickle=False)
                    tmp.replace(f)
        bar.update(len(chunk))
    bar.close()
    return feats, problems


# --------------------------------------------------------------------------- heads


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    c: float,
    seed: int = 0,
    iters: int = 200,
    balanced: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised multinomial logistic regression (full-batch L-BFGS); returns (W, b) with
    W of shape (features, classes). The penalty is sum(W^2) / (2 C n), as in liblinear-style C.

    ``balanced`` weights each class's loss by n / (classes x its count), so every class counts
    the same, as in unweighted accuracy (RAVDESS has half as many neutral clips as the others).
    """
    import torch

    torch.manual_seed(seed)
    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
    )
    lam = 1.0 / (c * len(x))
    weight = None
    if balanced:
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        # a class absent from y gets weight 0 (it contributes no loss terms anyway)
        weight = torch.tensor(
            np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0),
            dtype=torch.float32,
        )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, weight=weight)
        loss = loss + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _check_shrinkages(values: Sequence[float]) -> None:
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ModelError(f"LDA shrinkages must lie in [0, 1], got {list(values)}")


def fit_lda(
    x: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float, balanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant analysis with a shrunk within-class covariance; returns (W, b) with W
    of shape (features, classes), scores ``x @ W + b`` (log-posteriors up to a constant).

    The covariance is pulled toward a multiple of the identity by ``shrinkage`` in [0, 1], which
    keeps the 5376-dimensional estimate from ~6000 rows well conditioned. Augmented copies of a
    clip land in the same class, so the covariance learns the directions that noise, the phone
    band and speed move features along, and the discriminant discounts them.

    ``balanced`` gives every class the same prior and the same weight in the covariance (as the
    balanced softmax loss does); otherwise both follow the class counts. A class absent from
    ``y`` gets a zero column and a bias that keeps it out of every prediction.
    """
    return fit_lda_shrinkages(x, y, n_classes, [shrinkage], balanced)[0]


def fit_lda_shrinkages(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    shrinkages: Sequence[float],
    balanced: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_lda` at each of ``shrinkages``, computing the within-class scatter once (it
    costs more than each solve)."""
    _check_shrinkages(shrinkages)
    x64 = x.astype(np.float64)
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    means = np.zeros((n_classes, x.shape[1]))
    for k in np.flatnonzero(present):
        means[k] = x64[y == k].mean(0)
    resid = x64 - means[y]
    if balanced:
        row_weight = 1.0 / (present.sum() * counts[y])
        log_prior = np.zeros(n_classes)
    else:
        row_weight = np.full(len(y), 1.0 / len(y))
        log_prior = np.log(np.maximum(counts, 1) / len(y))
    # covariance = a.T @ a, shrunk toward (its mean variance) x identity
    a = resid * np.sqrt(row_weight)[:, None]
    mean_variance = np.einsum("ij,ij->", a, a) / a.shape[1]
    if mean_variance <= 0:
        # No variation within any class (one clip per class, as in a cross-validation fold
        # that trains on one small speaker): shrink toward the unit variance of standardised
        # features instead, which makes the head a nearest-class-mean rule rather than a crash.
        mean_variance = 1.0
    # the scatter's rank is at most rows - classes: with more features, no shrinkage, no inverse
    if mean_variance * min(shrinkages) <= 0 and a.shape[1] > a.shape[0] - present.sum():
        raise ModelError(
            f"LDA covariance is singular ({a.shape[1]} features, {a.shape[0]} rows); "
            "use a shrinkage above 0"
        )
    # fewer rows than features (wide wav2vec2 layer stacks): solve through the rows' Gram
    # matrix (Woodbury identity), never forming the features^2 covariance
    through_rows = a.shape[1] > a.shape[0]
    scatter = a @ a.T if through_rows else a.T @ a
    fits = []
    for shrinkage in shrinkages:
        ridge = shrinkage * mean_variance
        shrunk = (1.0 - shrinkage) * scatter
        shrunk[np.diag_indices_from(shrunk)] += ridge
        try:
            if through_rows:
                inner = np.linalg.solve(shrunk, a @ means.T)
                w = (means.T - (1.0 - shrinkage) * (a.T @ inner)) / ridge
            else:
                w = np.linalg.solve(shrunk, means.T)
        except np.linalg.LinAlgError as exc:
            raise ModelError(
                f"LDA covariance is singular ({exc}); use a shrinkage above 0"
            ) from exc
        b = -0.5 * np.einsum("kd,dk->k", means, w) + log_prior
        # LDA scores have no fixed scale: keep an absent class out with a bias below any score
        w[:, ~present] = 0.0
        b[~present] = -1e9
        fits.append((w.astype(np.float32), b.astype(np.float32)))
    return fits


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature that minimises the log-loss of held-out ``logits`` (a 1-D search
    over 0.05-1000, 5 % steps), so the probabilities a head reports are calibrated; argmax is
    unchanged."""
    best, best_loss = 1.0, np.inf
    for t in np.exp(np.arange(np.log(0.05), np.log(1000.0), np.log(1.05))):
        logp = np.log(softmax(logits / t) + 1e-12)
        loss = -float(np.mean(logp[np.arange(len(y)), y]))
        if loss < best_loss:
            best, best_loss = float(t), loss
    return best


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression in its dual form (n < features): returns (W, b), W (features, targets)."""
    return fit_ridge_alphas(x, y, [alpha])[0]


def fit_ridge_alphas(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_ridge` at each of ``alphas``, computing the Gram matrix once."""
    xm, ym = x.mean(0), y.mean(0)
    xc = (x - xm).astype(np.float64)
    gram = xc @ xc.T
    fits = []
    for alpha in alphas:
        penalised = gram.copy()
        penalised[np.diag_indices_from(penalised)] += alpha
        w = xc.T @ np.linalg.solve(penalised, (y - ym).astype(np.float64))
        fits.append((w.astype(np.float32), (ym - xm @ w).astype(np.float32)))
    return fits


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def unweighted_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean per-class recall over classes present in ``y``."""
    recalls = [np.mean(pred[y == k] == k) for k in range(n_classes) if np.any(y == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


def export_heads(
    path: Path,
    mean: np.ndarray,
    std: np.ndarray,
    w_cls: np.ndarray,
    b_cls: np.ndarray,
    va_points: np.ndarray | None = None,
    w_va: np.ndarray | None = None,
    b_va: np.ndarray | None = None,
) -> None:
    """Write scaler + softmax head + valence/arousal head as one ONNX graph.

    Valence/arousal come from ``va_points`` (classes, 2) as ``probs @ va_points`` when given,
    else from the ridge head ``x @ w_va + b_va``. Input ``features`` (batch, F) raw pooled
    encoder features; outputs ``probs`` (batch, classes) and ``va`` (batch, 2) clipped to [-1, 1].
    """
    if (va_points is None) == (w_va is None or b_va is None):
        raise ValueError("give either va_points or both w_va and b_va")
    import torch

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # Standardise explicitly (subtract, then scale) instead of folding the scaler into
            # the weights: folding subtracts large float32 numbers when some feature has a tiny
            # std and moved predictions of a few clips away from the trained model.
            f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
            self.register_buffer("mean", f32(mean))
            self.register_buffer("inv_std", f32(1.0 / std))
            self.register_buffer("cls_w", f32(w_cls))
            self.register_buffer("cls_b", f32(b_cls))
            self.from_classes = va_points is not None
            if self.from_classes:
                self.register_buffer("va_points", f32(va_points))
            else:
                self.register_buffer("va_w", f32(w_va))
                self.register_buffer("va_b", f32(b_va))

        def forward(self, features):
            x = (features - self.mean) * self.inv_std
            probs = torch.softmax(x @ self.cls_w + self.cls_b, dim=-1)
            va = probs @ self.va_points if self.from_classes else x @ self.va_w + self.va_b
            return probs, torch.clamp(va, -1.0, 1.0)

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Heads(),
            (torch.zeros(1, len(mean)),),
            str(path),
            dynamo=False,
            input_names=["features"],
            output_names=["probs", "va"],
            dynamic_axes={"features": {0: "batch"}, "probs": {0: "batch"}, "va": {0: "batch"}},
            opset_version=17,
        )


@dataclass(frozen=True)
class ClassHeadCandidates:
    """The class heads cross-validation chooses among: one kind at several strengths, named
    ``"shrinkage=0.6"`` (LDA, :func:`fit_lda`) or ``"C=0.01"`` (logistic, :func:`fit_softmax`).
    Build it with :func:`classifier_candidates`."""

    parameter: str
    strengths: tuple[float, ...]
    #: (x, y, strengths) -> one (W, b) per strength
    fit_strengths: Callable[[np.ndarray, np.ndarray, list[float]], list]

    @property
    def names(self) -> list[str]:
        return [f"{self.parameter}={s:g}" for s in self.strengths]

    def fit(self, x: np.ndarray, y: np.ndarray, names: Sequence[str] | None = None) -> dict:
        """``{name: (W, b)}`` for the named candidates (all by default), fitted on (x, y)."""
        chosen = [
            (n, s)
            for n, s in zip(self.names, self.strengths, strict=True)
            if names is None or n in names
        ]
        fits = self.fit_strengths(x, y, [s for _, s in chosen])
        return {n: fit for (n, _), fit in zip(chosen, fits, strict=True)}


def classifier_candidates(
    kind: str,
    strengths: Sequence[float],
    seed: int = 0,
    balanced: bool = True,
    n_classes: int = len(CLASSES),
) -> ClassHeadCandidates:
    """LDA (``kind="lda"``, ``strengths`` = shrinkages, fitted together: they share one
    scatter matrix) or logistic (``"logistic"``, ``strengths`` = C values) class heads."""
    if kind == "lda":
        _check_shrinkages(strengths)  # here too, so a bad value fails before any embedding

        def fit_together(x, y, shrinkages):
            return fit_lda_shrinkages(x, y, n_classes, shrinkages, balanced)

        return ClassHeadCandidates("shrinkage", tuple(strengths), fit_together)
    if kind == "logistic":
        if any(v <= 0 for v in strengths):
            raise ModelError(f"logistic C values must be positive, got {list(strengths)}")

        def fit_each(x, y, cs):
            return [fit_softmax(x, y, n_classes, c, seed=seed, balanced=balanced) for c in cs]

        return ClassHeadCandidates("C", tuple(strengths), fit_each)
    raise ModelError(f"unknown classifier {kind!r}; use lda or logistic")


def train_heads(
    x: np.ndarray,
    y: np.ndarray,
    va: np.ndarray,
    groups: np.ndarray,
    candidates: ClassHeadCandidates,
    alphas: Sequence[float],
    n_folds: int = 9,
) -> dict:
    """Pick the class head (one of ``candidates``) by leave-speaker-group-out CV, calibrate its
    softmax temperature on the held-out folds' scores, pick the valence/arousal head, refit on
    everything.

    The valence/arousal head is the one with the lower held-out squared error: ridge regression
    on the features (at the best of ``alphas``), or ``"classes"``: the calibrated class
    probabilities times each class's mean target (the targets are derived from the classes, so
    the expected target given the class posterior is their natural estimate).

    The sorted speakers are dealt round-robin into ``n_folds`` folds (one speaker per fold when
    there are fewer; no CV, temperature 1 and the first candidates with a single speaker).

    Returns a dict with the scaler, weights, the choices and the CV figures.
    """
    ug = sorted(set(groups))
    k_folds = min(n_folds, len(ug))
    folds = [set(ug[k::k_folds]) for k in range(k_folds)] if k_folds >= 2 else []

    def scaled(tr, te):
        m, s = x[tr].mean(0), x[tr].std(0) + 1e-6
        return (x[tr] - m) / s, (x[te] - m) / s

    cv: dict[str, float] = {}
    best, best_a, temperature, va_from_classes = candidates.names[0], alphas[0], 1.0, False
    if folds:
        ua = {name: [] for name in candidates.names}
        held_out = {name: [] for name in candidates.names}
        y_held, va_held, points_held = [], [], []
        err = {a: [] for a in alphas}
        from tqdm import tqdm

        # the CV is most of a warm-cache run (minutes for the default recipe): show it moving
        for fold in tqdm(folds, desc="cross-validation", unit="fold"):
            te = np.array([g in fold for g in groups])
            y_held.append(y[te])
            va_held.append(va[te])
            xtr, xte = scaled(~te, te)
            for name, (w, b) in candidates.fit(xtr, y[~te]).items():
                held_out[name].append(xte @ w + b)
                pred = held_out[name][-1].argmax(1)
                ua[name].append(unweighted_accuracy(y[te], pred, w.shape[1]))
            # w: the last candidate's weights, one column per class
            points_held.append(class_mean_targets(y[~te], va[~te], w.shape[1]))
            for a, (w, b) in zip(alphas, fit_ridge_alphas(xtr, va[~te], alphas), strict=True):
                err[a].append(float(np.mean((np.clip(xte @ w + b, -1, 1) - va[te]) ** 2)))
        cv = {f"ua_{name}": float(np.mean(v)) for name, v in ua.items()}
        cv.update({f"va_mse_alpha={a:g}": float(np.mean(v)) for a, v in err.items()})
        best = max(candidates.names, key=lambda name: np.mean(ua[name]))
        best_a = min(alphas, key=lambda a: np.mean(err[a]))
        temperature = fit_temperature(np.concatenate(held_out[best]), np.concatenate(y_held))
        cv["va_mse_classes"] = float(
            np.mean(
                [
                    np.mean((np.clip(softmax(z / temperature) @ points, -1, 1) - truth) ** 2)
                    for z, points, truth in zip(held_out[best], points_held, va_held, strict=True)
                ]
            )
        )
        va_from_classes = cv["va_mse_classes"] < np.mean(err[best_a])
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    w_cls, b_cls = candidates.fit(xs, y, [best])[best]
    if va_from_classes:
        va_fit = {"va_points": class_mean_targets(y, va, w_cls.shape[1])}
    else:
        w_va, b_va = fit_ridge(xs, va, best_a)
        va_fit = {"w_va": w_va, "b_va": b_va}
    return {
        "mean": mean,
        "std": std,
        "w_cls": w_cls / temperature,
        "b_cls": b_cls / temperature,
        **va_fit,
        "classifier": best,
        "temperature": temperature,
        "va_head": "classes" if va_from_classes else f"ridge alpha={best_a:g}",
        "folds": len(folds),
        "cv": cv,
    }


def class_mean_targets(y: np.ndarray, va: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, 2): each class's mean valence/arousal target (0 for a class with no rows)."""
    points = np.zeros((n_classes, va.shape[1]), np.float64)
    for c in range(n_classes):
        if np.any(y == c):
            points[c] = va[y == c].mean(0)
    return points


# --------------------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest", required=True, help="CSV with path,emotion[,speaker,intensity,split]"
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
        default="clean,phone,noise,crop,slow,fast,reverb,speech_only",
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
    p.add_argument("--shrinkage", default="0.4,0.5,0.6,0.7,0.8", help="candidate LDA shrinkages")
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
        default="balanced",
        choices=("balanced", "none"),
        help="balanced: every class weighs the same (in the loss, the LDA covariance and "
        "priors), as in unweighted accuracy; none: every clip weighs the same",
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
    p.add_argument("--device", default="cpu")


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
    import torch
    from emotion_monitor.models.circumplex import (
        INTENSITY_SCALE,
        UNKNOWN_INTENSITY_SCALE,
        valence_arousal,
    )

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    problems: list[str] = []
    rows = read_manifest(args.manifest, args.root, problems)
    train, test, notes = select_rows(rows)
    # rows left out, for the closing summary: malformed ones and those select_rows dropped
    n_skipped = len(problems) + len(rows) - len(train) - len(test)
    for line in problems + notes:
        print(f"skipped: {line}")
    if not train:
        raise ModelError(
            f"{args.manifest}: no training rows (rows whose split column is 'test' are held out "
            "for the final scores; training uses rows with split 'train' or no split column)"
        )
    # parse the head options first: a typo must not cost an embedding run
    strengths = ("--shrinkage", args.shrinkage) if args.classifier == "lda" else ("--C", args.C)
    strength_values = _numbers(*strengths)
    classifier_candidates(args.classifier, strength_values)  # checks the values
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
    features = PooledFeatures(encoder, layers, args.device, args.input_norm, args.backend)
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
    per_speaker = Counter(r.speaker for r in used if r.speaker)
    if len(per_speaker) > 1 and max(per_speaker.values()) > 4 * min(per_speaker.values()):
        # folds are dealt by speaker name, not size: a fold can hold almost nothing, and its
        # scores then drive the choice of the head and the temperature
        few, many = min(per_speaker, key=per_speaker.get), max(per_speaker, key=per_speaker.get)
        print(
            f"warning: speakers hold very different numbers of clips ({few}: {per_speaker[few]}, "
            f"{many}: {per_speaker[many]}); cross-validation folds are dealt by speaker, so the "
            "CV figures and the calibration can be unreliable"
        )
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
    groups = np.tile(np.array([r.speaker or str(i) for i, r in enumerate(train)])[ok], len(augs))
    heads = train_heads(x, y, va, groups, candidates, alphas, args.folds)
    if heads["folds"]:
        cv = heads["cv"]
        ua = ", ".join(f"{n} {cv[f'ua_{n}']:.3f}" for n in candidates.names)
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
        "valence_arousal": "derived targets, see emotion_monitor.models.circumplex",
        "heads": "heads.onnx",
        "train": {
            "manifest": str(args.manifest),
            "clips": int(ok.sum()),
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
        config["test"] = {  # None, not NaN (invalid JSON), when no test clip could be read
            "clips": int(tok.sum()),
            "accuracy": float(np.mean(pred == yt)) if tok.any() else None,
            "unweighted_accuracy": unweighted_accuracy(yt, pred, len(labels))
            if tok.any()
            else None,
        }
        print(f"test split: {json.dumps(config['test'])}")
    _write_outputs(out, heads, config)
    print(
        f"wrote {out / 'heads.onnx'} and {out / 'config.json'} in {time.time() - t0:.0f} s: "
        f"labels {', '.join(labels)}; {len(used)} training clips"
        + (f", {n_skipped} row(s) skipped (listed above)" if n_skipped else "")
    )
    return 0
