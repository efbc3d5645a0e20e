"""The class-head fitters of `emotion-monitor train`: shrinkage LDA, temperature calibration."""

from __future__ import annotations

import numpy as np
import pytest
from emotion_monitor.models.adapters.common import softmax
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.training.heads import (
    fit_lda,
    fit_lda_shrinkages,
    fit_ridge,
    fit_ridge_alphas,
    fit_temperature,
)


def _nuisance_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # Feature 0 carries the class plus a large nuisance that feature 1 measures alone (like a
    # channel effect that moves every class the same way); the other features are pure noise.
    y = rng.integers(0, 3, n)
    nuisance = 5.0 * rng.standard_normal(n)
    x = 0.3 * rng.standard_normal((n, 10))
    x[:, 0] += 1.5 * y + nuisance
    x[:, 1] += nuisance
    return x, y


def test_lda_discounts_directions_shared_by_every_class():
    rng = np.random.default_rng(0)
    x, y = _nuisance_data(3000, rng)
    xt, yt = _nuisance_data(3000, rng)
    w, b = fit_lda(x, y, 3, shrinkage=0.01)
    assert w.shape == (10, 3) and b.shape == (3,)
    # the learned covariance cancels the nuisance: feature 0 minus feature 1 separates the classes
    assert np.mean((xt @ w + b).argmax(1) == yt) > 0.9  # the Bayes rate is about 0.94
    # full shrinkage ignores the covariance (nearest class mean) and falls for the nuisance
    w1, b1 = fit_lda(x, y, 3, shrinkage=1.0)
    assert np.mean((xt @ w1 + b1).argmax(1) == yt) < 0.6


def test_lda_balanced_priors_and_absent_classes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 5))
    y = np.where(np.arange(400) < 300, 0, 1)  # class 0 three times as common; class 2 absent
    x[y == 1] += 0.2
    _, b_bal = fit_lda(x, y, 3, shrinkage=0.5, balanced=True)
    _, b_cnt = fit_lda(x, y, 3, shrinkage=0.5, balanced=False)
    # the count prior favours the common class by log(3) more than equal priors do
    assert (b_cnt[0] - b_cnt[1]) - (b_bal[0] - b_bal[1]) == pytest.approx(np.log(3), abs=0.05)
    w, b = fit_lda(x, y, 3, shrinkage=0.5, balanced=True)
    assert not np.any((x @ w + b).argmax(1) == 2)
    with pytest.raises(ModelError, match="shrinkage"):
        fit_lda(x, y, 3, shrinkage=1.5)


def test_temperature_undoes_overconfident_scores():
    rng = np.random.default_rng(2)
    logits = 2.0 * rng.standard_normal((4000, 8))
    # labels drawn from the logits' own softmax: these logits are calibrated as they are
    p = softmax(logits)
    y = np.array([rng.choice(8, p=row) for row in p])
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.15)
    assert fit_temperature(4.0 * logits, y) == pytest.approx(4.0, rel=0.15)


def test_lda_with_more_features_than_rows_matches_the_direct_solution():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 100))
    y = np.arange(40) % 4
    x[:, :3] += y[:, None]
    w, b = fit_lda(x, y, 4, shrinkage=0.3, balanced=True)
    # the textbook form, with the full 100 x 100 covariance
    means = np.stack([x[y == k].mean(0) for k in range(4)])
    resid = x - means[y]
    cov = sum(np.cov(resid[y == k].T, bias=True) for k in range(4)) / 4
    cov = 0.7 * cov + 0.3 * np.trace(cov) / 100 * np.eye(100)
    w_direct = np.linalg.solve(cov, means.T)
    assert np.allclose(w, w_direct, rtol=1e-4, atol=1e-5)
    assert np.allclose(b, -0.5 * np.sum(means * w_direct.T, 1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="singular"):
        fit_lda(x, y, 4, shrinkage=0.0)


@pytest.mark.parametrize("features", [12, 150])  # the covariance path and the Gram-matrix path
def test_fits_sharing_one_scatter_equal_the_separate_fits(features):
    rng = np.random.default_rng(6)
    y = np.arange(80) % 4
    x = rng.standard_normal((80, features))
    x[:, :4] += 2.0 * np.eye(4)[y]
    together = fit_lda_shrinkages(x, y, 4, [0.2, 0.5, 0.9], balanced=True)
    for shrinkage, (w, b) in zip([0.2, 0.5, 0.9], together, strict=True):
        w1, b1 = fit_lda(x, y, 4, shrinkage, balanced=True)
        assert np.array_equal(w, w1) and np.array_equal(b, b1)
    # the shrinkages really differ, so an unchanged scatter would show
    assert not np.allclose(together[0][0], together[2][0])
    va = x[:, :2] + 0.1 * rng.standard_normal((80, 2))
    for alpha, (w, b) in zip([1.0, 100.0], fit_ridge_alphas(x, va, [1.0, 100.0]), strict=True):
        w1, b1 = fit_ridge(x, va, alpha)
        assert np.array_equal(w, w1) and np.array_equal(b, b1)


def test_absent_class_stays_out_however_large_the_scores():
    # well-separated classes in many dimensions give LDA scores of hundreds; an input at the
    # feature mean has no class signal, and the absent class must still never win
    rng = np.random.default_rng(4)
    y = np.arange(600) % 3
    x = 0.1 * rng.standard_normal((600, 300))
    x[:, :3] += 5.0 * np.eye(3)[y]
    w, b = fit_lda(x, y, 4, shrinkage=0.1, balanced=True)
    probe = np.vstack([x.mean(0), x.mean(0) + 0.5 * rng.standard_normal((50, 300))])
    scores = probe @ w + b
    assert np.abs(x @ w + b)[:, :3].max() > 50
    assert not np.any(scores.argmax(1) == 3)
    assert np.all(softmax(scores)[:, 3] < 1e-12)


def _heads_data(n_speakers: int):
    rng = np.random.default_rng(5)
    groups = np.repeat([f"s{k}" for k in range(n_speakers)], 40)
    y = np.tile(np.arange(4), 10 * n_speakers)
    x = rng.standard_normal((len(y), 12))
    x[:, :4] += 3.0 * np.eye(4)[y]
    va = np.stack([np.where(y < 2, 0.5, -0.5), np.where(y % 2 == 0, 0.5, -0.5)], 1)
    return x, y, va, groups


@pytest.mark.parametrize("n_speakers", [1, 2, 5])
def test_train_heads_folds_choice_and_temperature(n_speakers):
    from emotion_monitor.models.training.heads import classifier_candidates, train_heads

    x, y, va, groups = _heads_data(n_speakers)
    candidates = classifier_candidates("lda", [0.2, 0.9], n_classes=4)
    heads = train_heads(x, y, va, groups, candidates, [1.0, 100.0], n_folds=3)
    xs = (x - heads["mean"]) / heads["std"]
    w, b = candidates.fit(xs, y)[heads["classifier"]]
    t = heads["temperature"]
    # the exported head is the refit head divided by the calibrated temperature
    assert np.allclose(heads["w_cls"] * t, w, rtol=1e-5, atol=1e-6)
    assert np.allclose(heads["b_cls"] * t, b, rtol=1e-5, atol=1e-5)
    if n_speakers == 1:
        # nothing to hold out: no CV, the first candidates, probabilities left as scored
        assert heads["cv"] == {} and t == 1.0 and heads["folds"] == 0
        assert heads["classifier"] == "shrinkage=0.2" and heads["va_head"] == "ridge alpha=1"
    else:
        assert set(heads["cv"]) == {
            "ua_shrinkage=0.2",
            "ua_shrinkage=0.9",
            "va_mse_alpha=1",
            "va_mse_alpha=100",
            "va_mse_classes",
        }
        # the targets are a function of the class here, so the class-derived head wins
        assert heads["cv"]["va_mse_classes"] < min(
            heads["cv"]["va_mse_alpha=1"], heads["cv"]["va_mse_alpha=100"]
        )
        assert heads["va_head"] == "classes" and heads["folds"] == min(3, n_speakers)
        assert np.allclose(heads["va_points"], [[0.5, 0.5], [0.5, -0.5], [-0.5, 0.5], [-0.5, -0.5]])
        # the temperature is the one that best fits the held-out folds' scores
        speakers = sorted(set(groups))
        k = min(3, n_speakers)
        logits, truth = [], []
        for fold in (set(speakers[i::k]) for i in range(k)):
            held = np.isin(groups, list(fold))
            m, sd = x[~held].mean(0), x[~held].std(0) + 1e-6
            w, b = candidates.fit((x[~held] - m) / sd, y[~held])[heads["classifier"]]
            logits.append((x[held] - m) / sd @ w + b)
            truth.append(y[held])
        assert t == fit_temperature(np.concatenate(logits), np.concatenate(truth))


@pytest.mark.parametrize("va_head", ["classes", "ridge"])
def test_exported_heads_match_numpy(tmp_path, va_head):
    import onnxruntime as ort
    from emotion_monitor.models.training.heads import export_heads

    rng = np.random.default_rng(2)
    mean, std = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    w_cls, b_cls = rng.standard_normal((6, 3)), rng.standard_normal(3)
    x = rng.standard_normal((5, 6))
    probs = softmax(((x - mean) / std) @ w_cls + b_cls)
    if va_head == "classes":
        points = np.array([[-0.6, 0.8], [0.4, -0.6], [0.9, 0.9]])
        export_heads(tmp_path / "h.onnx", mean, std, w_cls, b_cls, va_points=points)
        expected_va = np.clip(probs @ points, -1, 1)
    else:
        w_va, b_va = rng.standard_normal((6, 2)), rng.standard_normal(2)
        export_heads(tmp_path / "h.onnx", mean, std, w_cls, b_cls, w_va=w_va, b_va=b_va)
        expected_va = np.clip(((x - mean) / std) @ w_va + b_va, -1, 1)
    session = ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])
    got_probs, got_va = session.run(None, {"features": x.astype(np.float32)})
    assert np.allclose(got_probs, probs, atol=1e-5)
    assert np.allclose(got_va, expected_va, atol=1e-5)
    with pytest.raises(ValueError, match="either va_points or both"):
        export_heads(tmp_path / "bad.onnx", mean, std, w_cls, b_cls)


def test_cell_weights_give_each_corpus_and_its_classes_equal_shares():
    from emotion_monitor.models.training.heads import cell_weights

    # corpus "a": 300 of class 0, 100 of class 1; corpus "b" (no class 1): 50 of 0, 50 of 2
    y = np.array([0] * 300 + [1] * 100 + [0] * 50 + [2] * 50)
    corpora = np.array(["a"] * 400 + ["b"] * 100)
    w = cell_weights(y, corpora)
    assert w.sum() == pytest.approx(1.0)
    assert w[corpora == "a"].sum() == pytest.approx(0.5) == w[corpora == "b"].sum()
    assert w[:300].sum() == pytest.approx(0.25) == w[300:400].sum()  # a's two classes
    assert w[450:].sum() == pytest.approx(0.25)


def test_a_corpus_without_a_class_teaches_nothing_about_it():
    # Corpus "b" lacks class 1: weighted LDA takes class 1's mean from corpus "a" alone, so
    # adding corpus "b" (however large) leaves class 1's discriminant where "a" put it, while
    # the unweighted fit lets b's many rows of class 0 pull the shared covariance around.
    from emotion_monitor.models.training.heads import cell_weights

    rng = np.random.default_rng(5)
    ya = rng.integers(0, 2, 400)
    xa = rng.standard_normal((400, 4)) + np.eye(4)[ya] * 2
    yb = np.zeros(4000, int)
    xb = rng.standard_normal((4000, 4)) + np.eye(4)[0] * 2
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    corpora = np.array(["a"] * 400 + ["b"] * 4000)
    w, b = fit_lda(x, y, 3, shrinkage=0.5, weights=cell_weights(y, corpora))
    test_y = rng.integers(0, 2, 2000)
    test_x = rng.standard_normal((2000, 4)) + np.eye(4)[test_y] * 2
    recall_1 = np.mean((test_x[test_y == 1] @ w + b).argmax(1) == 1)
    w0, b0 = fit_lda(x, y, 3, shrinkage=0.5, balanced=False)
    recall_1_counts = np.mean((test_x[test_y == 1] @ w0 + b0).argmax(1) == 1)
    assert recall_1 > 0.8 and recall_1 > recall_1_counts + 0.2
    assert not np.any((test_x @ w + b).argmax(1) == 2)  # no corpus has class 2


@pytest.mark.parametrize("rows, features", [(50, 200), (400, 30)])
def test_ridge_solves_the_same_problem_wide_or_tall(rows, features):
    # wide data is solved through the rows' Gram matrix, tall data through the features'
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((rows, features)), rng.standard_normal((rows, 2))
    w, b = fit_ridge(x, y, 3.0)
    xc = x - x.mean(0)
    expected = np.linalg.solve(xc.T @ xc + 3.0 * np.eye(features), xc.T @ (y - y.mean(0)))
    assert np.abs(w - expected).max() < 1e-5
    assert np.abs(x @ w + b - (xc @ expected + y.mean(0))).max() < 1e-4
