"""The heads ``train`` fits on standardised pooled features: shrinkage LDA or L2 softmax regression
for the classes (chosen and temperature-calibrated by leave-speaker-group-out cross-validation),
ridge regression or the class posteriors for valence/arousal, and their export as one ONNX graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.common import softmax
from emotion_monitor.models.base import EMOTIONS, ModelError
from tqdm import tqdm

#: the classes of the shipped default model (the default number of class columns)
CLASSES: tuple[str, ...] = EMOTIONS[:8]


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
    import torch  # lazy: torch

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
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    shrinkage: float,
    balanced: bool = False,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant analysis with a shrunk within-class covariance; returns (W, b) with W
    of shape (features, classes), scores ``x @ W + b`` (log-posteriors up to a constant).

    The covariance is pulled toward a multiple of the identity by ``shrinkage`` in [0, 1], which
    keeps the 5376-dimensional estimate from ~6000 rows well conditioned. Augmented copies of a
    clip land in the same class, so the covariance learns the directions that noise, the phone
    band and speed move features along, and the discriminant discounts them.

    ``balanced`` gives every class the same prior and the same weight in the covariance (as the
    balanced softmax loss does); otherwise both follow the class counts. ``weights`` (one per
    row, e.g. :func:`cell_weights`) replace the class balance: the class means, the covariance
    and the (then uniform) priors follow them. A class absent from ``y`` gets a zero column and
    a bias that keeps it out of every prediction, so a corpus without a class teaches nothing
    about it.
    """
    return fit_lda_shrinkages(x, y, n_classes, [shrinkage], balanced, weights)[0]


def fit_lda_shrinkages(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    shrinkages: Sequence[float],
    balanced: bool = False,
    weights: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_lda` at each of ``shrinkages``, computing the within-class scatter once (it
    costs more than each solve)."""
    _check_shrinkages(shrinkages)
    x64 = x.astype(np.float64)
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    means = np.zeros((n_classes, x.shape[1]))
    for k in np.flatnonzero(present):
        rows = y == k
        means[k] = np.average(x64[rows], axis=0, weights=None if weights is None else weights[rows])
    resid = x64 - means[y]
    if weights is not None:
        row_weight = weights / weights.sum()
        log_prior = np.zeros(n_classes)
    elif balanced:
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
    """Ridge regression: returns (W, b), W (features, targets)."""
    return fit_ridge_alphas(x, y, [alpha])[0]


def fit_ridge_alphas(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_ridge` at each of ``alphas``, computing the Gram matrix once.

    The Gram matrix is the smaller of the two: rows x rows (the dual form) when there are fewer
    rows than features, else features x features. Two corpora with four augmentations give
    18k rows of 5376 features, whose 18k x 18k dual Gram matrix took 2.6 GB per copy (and
    crashed OpenBLAS here).
    """
    xm, ym = x.mean(0), y.mean(0)
    xc = (x - xm).astype(np.float64)
    yc = (y - ym).astype(np.float64)
    dual = xc.shape[0] < xc.shape[1]
    gram = xc @ xc.T if dual else xc.T @ xc
    rhs = yc if dual else xc.T @ yc
    fits = []
    for alpha in alphas:
        penalised = gram.copy()
        penalised[np.diag_indices_from(penalised)] += alpha
        solved = np.linalg.solve(penalised, rhs)
        w = xc.T @ solved if dual else solved
        fits.append((w.astype(np.float32), (ym - xm @ w).astype(np.float32)))
    return fits


def cell_weights(y: np.ndarray, corpora: np.ndarray) -> np.ndarray:
    """Row weights that give every corpus the same total and, within it, every class present
    the same share: 1 / (clips of the row's (corpus, class) cell x classes of its corpus).

    A small corpus then counts as much as a large one, and a class only one corpus has is
    learnt from that corpus without outweighing the classes both have.
    """
    weights = np.zeros(len(y), np.float64)
    for corpus in np.unique(corpora):
        in_corpus = corpora == corpus
        classes = np.unique(y[in_corpus])
        for k in classes:
            cell = in_corpus & (y == k)
            weights[cell] = 1.0 / (cell.sum() * len(classes))
    return weights / len(np.unique(corpora))


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
    import torch  # lazy: torch

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
    #: (x, y, strengths, row weights or None) -> one (W, b) per strength
    fit_strengths: Callable[[np.ndarray, np.ndarray, list[float], np.ndarray | None], list]

    @property
    def names(self) -> list[str]:
        return [f"{self.parameter}={s:g}" for s in self.strengths]

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        names: Sequence[str] | None = None,
        weights: np.ndarray | None = None,
    ) -> dict:
        """``{name: (W, b)}`` for the named candidates (all by default), fitted on (x, y) with
        optional row ``weights``."""
        chosen = [
            (n, s)
            for n, s in zip(self.names, self.strengths, strict=True)
            if names is None or n in names
        ]
        fits = self.fit_strengths(x, y, [s for _, s in chosen], weights)
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

        def fit_together(x, y, shrinkages, weights):
            return fit_lda_shrinkages(x, y, n_classes, shrinkages, balanced, weights)

        return ClassHeadCandidates("shrinkage", tuple(strengths), fit_together)
    if kind == "logistic":
        if any(v <= 0 for v in strengths):
            raise ModelError(f"logistic C values must be positive, got {list(strengths)}")

        def fit_each(x, y, cs, weights):
            if weights is not None:
                raise ModelError("row weights (--class-weight cell) need the LDA head")
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
    weights: np.ndarray | None = None,
    corpora: np.ndarray | None = None,
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

    ``weights`` (per row) go to the class head fits; with ``corpora`` (the corpus of each row)
    the CV figures include the chosen head's unweighted accuracy on each corpus's held-out rows
    (``ua_<corpus>``, over the classes that corpus has).

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
        y_held, va_held, points_held, rows_held = [], [], [], []
        err = {a: [] for a in alphas}

        # the CV is most of a warm-cache run (minutes for the default recipe): show it moving
        for fold in tqdm(folds, desc="cross-validation", unit="fold"):
            te = np.array([g in fold for g in groups])
            rows_held.append(np.flatnonzero(te))
            y_held.append(y[te])
            va_held.append(va[te])
            xtr, xte = scaled(~te, te)
            w_tr = None if weights is None else weights[~te]
            for name, (w, b) in candidates.fit(xtr, y[~te], weights=w_tr).items():
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
        if corpora is not None:
            held_corpora = corpora[np.concatenate(rows_held)]
            truth, pred = np.concatenate(y_held), np.concatenate(held_out[best]).argmax(1)
            n_classes = held_out[best][0].shape[1]
            for corpus in np.unique(corpora):
                mine = held_corpora == corpus
                cv[f"ua_{corpus}"] = unweighted_accuracy(truth[mine], pred[mine], n_classes)
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
    w_cls, b_cls = candidates.fit(xs, y, [best], weights)[best]
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
