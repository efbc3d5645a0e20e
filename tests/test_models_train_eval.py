"""train -> heads -> evaluate end to end on a handful of real clips, and evaluate's edge cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import RAVDESS, ravdess_rows
from emotion_monitor.models.base import EmotionModel, ModelError, Prediction
from emotion_monitor.models.training.evaluate import concordance, evaluate, score
from emotion_monitor.streamer.cli import main as cli

pytestmark = pytest.mark.slow  # training and evaluating heads


def _write_manifest(path, rows, root=None):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "speaker", "emotion", "intensity", "split"])
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})


def _subset(per_class: int, speakers, split: str):
    rows, seen = [], {}
    for r in ravdess_rows():
        key = (r["speaker"], r["emotion"])
        if r["speaker"] in speakers and seen.get(key, 0) < per_class:
            seen[key] = seen.get(key, 0) + 1
            rows.append({**r, "split": split})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    rows = _subset(2, {"Actor_01", "Actor_02"}, "train") + _subset(1, {"Actor_20"}, "test")
    rows.append(
        {
            "path": "Actor_01/does-not-exist.flac",
            "speaker": "Actor_01",
            "emotion": "sad",
            "split": "train",
        }
    )
    manifest = tmp / "small.csv"
    _write_manifest(manifest, rows)
    out = tmp / "heads"
    argv = [
        "train",
        "--manifest",
        str(manifest),
        "--root",
        str(RAVDESS),
        # two encoders joined by "+" (the default model's form); the same one twice keeps it cheap
        "--encoder",
        "whisper-tiny+whisper-tiny",
        "--augment",
        "clean,phone",
        "--layers",
        "1,2,4+0,3",
        "--shrinkage",
        "0.3,0.7",
        "--alpha",
        "10",
        "--out",
        str(out),
        "--cache",
        str(tmp / "cache"),
        "--backend",
        "torch",
    ]
    assert cli(argv) == 0
    return {"out": out, "argv": argv, "manifest": manifest, "tmp": tmp}


def test_train_writes_heads_and_is_reproducible(trained, capsys):
    from emotion_monitor.models.heads_model import load_model_dir

    out = trained["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"] == "whisper-tiny+whisper-tiny"
    assert config["layers"] == [[1, 2, 4], [0, 3]]
    assert config["feature_dim"] == 2 * 384 * 5
    assert config["train"]["clips"] == 32  # the missing file was reported and skipped
    assert "test" in config
    # the default class head: shrinkage LDA, one of the two candidates, chosen on held-out folds
    # (two speakers: one per fold); test_models_heads.py checks the calibration itself
    assert config["train"]["classifier"] in ("lda shrinkage=0.3", "lda shrinkage=0.7")
    assert config["train"]["folds"] == 2  # the folds that ran (two speakers), not --folds 9
    assert set(config["train"]["cv"]) >= {"ua_shrinkage=0.3", "ua_shrinkage=0.7"}
    first = (out / "heads.onnx").read_bytes()
    model = load_model_dir(out, device="cpu")
    rng = np.random.default_rng(0)
    windows = [(0.1 * rng.standard_normal(32000)).astype(np.float32)]
    p1 = model.predict(windows)[0]
    # second run: features come from the cache, the result is the same
    assert cli(trained["argv"]) == 0
    assert "does-not-exist" in capsys.readouterr().out
    p2 = load_model_dir(out, device="cpu").predict(windows)[0]
    assert p1 == p2
    assert len((out / "heads.onnx").read_bytes()) == len(first)


def test_train_repeats_wherever_the_data_lies(trained, tmp_path):
    # The random augmentations draw from the audio itself, not from the path's spelling: the same
    # clips reached through another folder name and a relative --root train the same heads.
    import os
    import shutil

    link = tmp_path / "elsewhere"
    link.symlink_to(RAVDESS, target_is_directory=True)
    manifest = tmp_path / "small.csv"
    shutil.copy(trained["manifest"], manifest)
    outs = []
    for k, root in enumerate((str(RAVDESS), os.path.relpath(link))):
        out = tmp_path / f"heads{k}"
        argv = list(trained["argv"])
        argv[argv.index("--augment") + 1] = "clean,noise,crop"
        argv[argv.index("--manifest") + 1] = str(manifest if k else trained["manifest"])
        argv[argv.index("--root") + 1] = root
        argv[argv.index("--out") + 1] = str(out)
        argv[argv.index("--cache") : argv.index("--cache") + 2] = ["--no-cache"]
        assert cli(argv) == 0
        outs.append((out / "heads.onnx").read_bytes())
    assert outs[0] == outs[1]


def test_embedding_cache_follows_the_audio_not_the_file(tmp_path):
    # Copies of the clips elsewhere, with new modification times, hit the cache; a clip whose
    # samples changed does not.
    import os
    import shutil

    from emotion_monitor.models.training.feature_cache import embed_rows, make_embedder
    from emotion_monitor.models.training.manifest import Row

    src = [RAVDESS / r["path"] for r in ravdess_rows("test")[:2]]
    copies = []
    for k, f in enumerate(src):
        copies.append(tmp_path / f"copy{k}.flac")
        shutil.copyfile(f, copies[-1])
        os.utime(copies[-1], (1e9, 1e9))
    embedder = make_embedder("whisper-tiny", input_norm="rms")
    cache = tmp_path / "cache"
    first, _ = embed_rows([Row(f, "sad") for f in src], embedder, ["clean", "noise"], cache)

    def no_encoder_runs(windows):
        raise AssertionError("features were recomputed")

    embedder.embed = no_encoder_runs
    again, _ = embed_rows([Row(f, "sad") for f in copies], embedder, ["clean", "noise"], cache)
    for a in ("clean", "noise"):
        assert np.array_equal(first[a], again[a])
    x, rate = sf.read(src[0], dtype="float32")
    sf.write(copies[0], 0.5 * x, rate)
    with pytest.raises(AssertionError, match="recomputed"):
        embed_rows([Row(copies[0], "sad")], embedder, ["clean"], cache, progress=False)


def test_augmentation_draws_follow_the_seed():
    from emotion_monitor.models.training.augment import augment

    x = (0.1 * np.random.default_rng(3).standard_normal(32000)).astype(np.float32)
    assert np.array_equal(augment(x, "noise"), augment(x.copy(), "noise"))
    assert not np.allclose(augment(x, "noise", seed=0), augment(x, "noise", seed=1))
    assert np.array_equal(augment(x, "phone", seed=0), augment(x, "phone", seed=1))
    assert not np.allclose(augment(x, "reverb", seed=0), augment(x, "reverb", seed=1))


def test_reverb_adds_a_decaying_tail_at_the_same_level():
    from emotion_monitor.models.training.augment import augment

    # a 0.2 s white-noise burst, then 1.3 s of silence: whatever follows the burst is the room
    rate = 16_000
    x = np.zeros(int(1.5 * rate), np.float32)
    x[: rate // 5] = 0.1 * np.random.default_rng(0).standard_normal(rate // 5)
    wet = augment(x, "reverb")
    assert wet.shape == x.shape
    assert np.sqrt(np.mean(wet**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)

    def energy(a, start, stop):
        return float(np.mean(a[int(start * rate) : int(stop * rate)] ** 2))

    burst = energy(wet, 0.0, 0.2)
    right_after, later = energy(wet, 0.2, 0.3), energy(wet, 0.5, 0.6)
    # a tail 0-12 dB below the direct sound, decaying by 60 dB within 0.2-0.8 s
    assert 1e-4 * burst < right_after < burst
    assert later < right_after
    assert energy(wet, 1.1, 1.5) < 1e-6 * burst


def test_speech_only_fills_the_window_with_the_speech():
    from emotion_monitor.models.training.augment import augment

    # a second of near-silence, 0.5 s of "speech", a little silence: like a RAVDESS clip
    rate = 16_000
    rng = np.random.default_rng(1)
    x = (1e-4 * rng.standard_normal(int(1.7 * rate))).astype(np.float32)
    voiced = (0.2 * np.sin(2 * np.pi * 150 * np.arange(rate // 2) / rate)).astype(np.float32)
    x[rate : rate + rate // 2] += voiced
    out = augment(x, "speech_only")
    assert out.shape == (2 * rate,)
    # the window is the speech repeated: no frame of it is silent
    frames = out.reshape(-1, rate // 50)
    assert np.all(np.sqrt(np.mean(frames**2, 1)) > 0.1)
    assert np.allclose(out[: rate // 2], x[rate : rate + rate // 2])
    assert np.allclose(out[rate // 2 : rate], x[rate : rate + rate // 2])
    # longer speech is cut to the window, from its start
    long = np.zeros(4 * rate, np.float32)
    long[rate // 2 :] = 0.2 * np.sin(2 * np.pi * 150 * np.arange(4 * rate - rate // 2) / rate)
    assert np.array_equal(augment(long, "speech_only"), long[rate // 2 : rate // 2 + 2 * rate])
    # shorter than one 20 ms frame: all of it, repeated; nothing: silence
    blip = np.array([0.1, -0.2, 0.3], np.float32)
    assert np.array_equal(augment(blip, "speech_only"), np.resize(blip, 2 * rate))
    assert np.array_equal(augment(blip[:0], "speech_only"), np.zeros(2 * rate, np.float32))


def test_evaluate_cli_on_trained_heads(trained):
    # the heads folder is not a registry spec, so score it through the function
    from emotion_monitor.models.heads_model import load_model_dir

    model = load_model_dir(trained["out"], device="cpu")
    result, true, va = evaluate(
        model, trained["manifest"], root=str(RAVDESS), split="test", progress=False
    )
    assert result["n"] == 8 and len(va) == 8
    assert result["valence_arousal_source"] == "model"
    # --channel degrades the audio before the model hears it
    in_room, _, va_in_room = evaluate(
        model,
        trained["manifest"],
        root=str(RAVDESS),
        split="test",
        channel="reverb",
        progress=False,
    )
    assert in_room["n"] == 8 and in_room["channel"] == "reverb"
    assert not np.allclose(va_in_room, va, atol=1e-4)
    with pytest.raises(ModelError, match="no rows with split 'tset'.*holds: test, train"):
        evaluate(model, trained["manifest"], root=str(RAVDESS), split="tset", progress=False)


def test_train_layer_groups_must_match_encoders(trained, capsys):
    argv = list(trained["argv"])
    argv[argv.index("--layers") + 1] = "1,2,4"  # one group for two encoders
    assert cli(argv) == 2
    assert "has 1 group(s) for 2 encoder(s)" in capsys.readouterr().err
    argv = list(trained["argv"])
    argv[argv.index("--shrinkage") + 1] = "0.3,high"
    assert cli(argv) == 2
    assert "--shrinkage takes comma-separated numbers, got '0.3,high'" in capsys.readouterr().err
    argv[argv.index("--shrinkage") + 1] = "0.3,1.5"
    assert cli(argv) == 2
    assert "LDA shrinkages must lie in [0, 1], got [0.3, 1.5]" in capsys.readouterr().err


class LoudnessModel(EmotionModel):
    """Deterministic stand-in: loud windows are angry, quiet ones sad."""

    name = "loudness"
    labels = ("angry", "happy", "sad")
    has_valence_arousal = False

    def predict(self, windows):
        out = []
        for w in windows:
            loud = float(np.sqrt(np.mean(w**2))) > 0.1
            out.append(
                Prediction(
                    classes={
                        "angry": 0.6 if loud else 0.1,
                        "happy": 0.3,
                        "sad": 0.1 if loud else 0.6,
                    }
                )
            )
        return out


@pytest.fixture()
def synthetic(tmp_path):
    t = np.arange(16000) / 16000
    rows = []
    for i, (emotion, amp) in enumerate(
        [
            ("angry", 0.5),
            ("angry", 0.4),
            ("sad", 0.01),
            ("sad", 0.02),
            ("calm", 0.01),
            ("happy", 0.5),
        ]
    ):
        sf.write(
            tmp_path / f"c{i}.wav", (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000
        )
        rows.append({"path": f"c{i}.wav", "emotion": emotion})
    (tmp_path / "broken.wav").write_bytes(b"RIFF nonsense")
    rows += [{"path": "missing.wav", "emotion": "sad"}, {"path": "broken.wav", "emotion": "angry"}]
    _write_manifest(tmp_path / "m.csv", rows)
    return tmp_path / "m.csv"


def test_evaluate_counts_bad_rows_and_other_labels(synthetic):
    result, _, _ = evaluate(LoudnessModel(), synthetic, progress=False)
    assert result["n"] == 5
    assert result["skipped_unreadable"] == 2
    assert result["skipped_other_labels"] == 1 and result["other_labels"] == {"calm": 1}
    assert result["accuracy"] == pytest.approx(4 / 5)
    assert result["unweighted_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["confusion"]["labels"] == ["angry", "happy", "sad"]
    assert result["confusion"]["matrix"][1] == [1, 0, 0]
    # valence/arousal fall back to the probability-weighted circumplex point of the classes
    assert result["valence_arousal_source"] == "classes"
    assert result["arousal_binary_accuracy"] is not None


def test_evaluate_reports_malformed_rows_and_reads_the_split_case_blind(synthetic):
    text = synthetic.read_text().splitlines()
    header, first = text[0], text[1]
    # a split column written by a spreadsheet ("Test"), and a row without a path
    lines = [header + ",split", first + ",Test", ",angry,Test"]
    synthetic.write_text("\n".join(lines) + "\n")
    result, _, _ = evaluate(LoudnessModel(), synthetic, split="test", progress=False)
    assert result["n"] == 1
    assert result["skipped_unreadable"] == 1
    assert "m.csv: line 3: " in result["unreadable"][0]


class ValenceArousalModel(EmotionModel):
    """Deterministic stand-in without classes: loud windows are aroused, quiet ones not."""

    name = "va-only"
    labels = ()
    has_valence_arousal = True

    def predict(self, windows):
        out = []
        for w in windows:
            loud = float(np.sqrt(np.mean(w**2))) > 0.1
            out.append(Prediction(valence=-0.5 if loud else -0.2, arousal=0.7 if loud else -0.6))
        return out


def test_evaluate_valence_arousal_model_skips_no_label(synthetic):
    # a model without classes scores every readable clip, whatever its label
    result, true, va = evaluate(ValenceArousalModel(), synthetic, progress=False)
    assert result["n"] == 6 and len(true) == 6 and len(va) == 6
    assert result["skipped_unreadable"] == 2
    assert result["skipped_other_labels"] == 0 and result["other_labels"] == {}
    assert result["n"] + result["skipped_unreadable"] + result["skipped_other_labels"] == 8
    assert result["valence_arousal_source"] == "model"


def test_evaluate_label_subset(synthetic):
    result, _, _ = evaluate(LoudnessModel(), synthetic, labels=["angry", "sad"], progress=False)
    # happy clips are not scored and happy can no longer be predicted
    assert result["n"] == 4 and result["accuracy"] == 1.0
    assert result["other_labels"] == {"calm": 1, "happy": 1}
    with pytest.raises(ModelError, match="surprise, boredom"):
        evaluate(
            LoudnessModel(), synthetic, labels=["angry", "surprise", "boredom"], progress=False
        )


def test_score_macro_f1():
    r = score(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b", "c"])
    assert r["accuracy"] == 0.75
    assert r["unweighted_accuracy"] == pytest.approx(0.75)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # "c" neither true nor predicted


def test_calibration_figures():
    from emotion_monitor.models.training.evaluate import calibration

    labels = ["a", "b"]
    sure = [Prediction(classes={"a": 1.0, "b": 0.0}), Prediction(classes={"a": 0.0, "b": 1.0})]
    assert calibration(["a", "b"], sure, labels) == {"log_loss": 0.0, "calibration_error": 0.0}
    # 0.9 confident and right half the time: 0.4 too confident
    bold = [Prediction(classes={"a": 0.9, "b": 0.1})] * 4
    got = calibration(["a", "a", "b", "b"], bold, labels)
    assert got["calibration_error"] == pytest.approx(0.4)
    assert got["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.1)) / 2)
    # restricted to a subset, probabilities are renormalised over it
    three = [Prediction(classes={"a": 0.3, "b": 0.3, "c": 0.4})]
    assert calibration(["a"], three, labels)["log_loss"] == pytest.approx(np.log(2))
    assert calibration(["a"], [Prediction(valence=0.1)], labels)["log_loss"] is None


def test_evaluate_cli_default_model(tmp_path, capsys):
    rows = [
        r
        for r in ravdess_rows("test")
        if r["speaker"] == "Actor_21"
        and r["intensity"] == "strong"
        and r["emotion"] in ("angry", "sad", "fear")
    ][:4]
    rows.append({"path": "nowhere.flac", "emotion": "angry"})
    manifest = tmp_path / "m.csv"
    _write_manifest(manifest, rows)
    rc = cli(
        [
            "evaluate",
            "--manifest",
            str(manifest),
            "--root",
            str(RAVDESS),
            "--labels",
            "angry,sad",
            "--json",
            str(tmp_path / "r.json"),
            "--plots",
            str(tmp_path / "plots"),
            "--streaming",
            "--model-device",
            "cpu",
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    for key in (
        "n",
        "accuracy",
        "unweighted_accuracy",
        "macro_f1",
        "per_class",
        "confusion",
        "arousal_binary_accuracy",
        "valence_binary_accuracy",
    ):
        assert key in result
    assert result["streaming"] and result["skipped_unreadable"] == 1
    assert result["n"] + result["skipped_other_labels"] == len(rows) - 1
    assert (tmp_path / "plots" / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "valence_arousal.png").stat().st_size > 1000
    assert cli(["evaluate", "--manifest", str(manifest), "--labels", "angry,grumpy"]) == 2
    assert "grumpy" in capsys.readouterr().err


def test_evaluate_fails_when_nothing_is_scored(tmp_path, capsys):
    # relative paths without --root (the common slip) leave nothing to score: not a result
    rows = [r for r in ravdess_rows("test") if r["emotion"] == "angry"][:2]
    manifest = tmp_path / "m.csv"
    # written with a byte-order mark, as spreadsheet programs save "CSV UTF-8"
    with manifest.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=["path", "emotion"])
        w.writeheader()
        w.writerows({"path": r["path"], "emotion": r["emotion"]} for r in rows)
    assert cli(["evaluate", "--manifest", str(manifest), "--model-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no clip was scored (2 unreadable, 0 with other labels)" in err
    missing = str(tmp_path / rows[0]["path"])
    assert err.count(missing) == 1  # the file is named once per line, not twice
    for batch, complaint in (("0", "must be at least 1"), ("abc", "must be a whole number")):
        with pytest.raises(SystemExit):
            cli(["evaluate", "--manifest", str(manifest), "--batch", batch])
        assert complaint in capsys.readouterr().err
    assert cli(["evaluate", "--manifest", str(manifest), "--labels", ","]) == 2
    assert "names no label" in capsys.readouterr().err


def test_train_refuses_bad_input_before_the_work(tmp_path, capsys):
    rows = [{"path": f"Actor_01/missing-{i}.flac", "emotion": "sad"} for i in range(3)]
    manifest = tmp_path / "m.csv"
    _write_manifest(manifest, rows)
    base = ["train", "--manifest", str(manifest), "--out", str(tmp_path / "out")]
    base += ["--encoder", "whisper-tiny", "--backend", "torch", "--cache", str(tmp_path / "c")]
    assert cli([*base, "--augment", "clean,nois"]) == 2
    assert "unknown augmentation(s) nois; use clean," in capsys.readouterr().err
    # every path relative to the wrong folder: say so, not "LDA covariance is singular"
    assert cli(base) == 2
    assert "none of the 3 training clips could be read; relative paths" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_concordance_against_the_derived_targets():
    true = ["angry", "calm", "sad", "happy", "neutral"]
    strength = ["strong", "normal", "strong", "normal", None]
    exact = [-0.6, 0.3, -0.7, 0.6, 0.0]  # valence targets: point x intensity (0.75 / 1.0)
    assert concordance(true, strength, exact, "valence") == pytest.approx(1.0)
    # a correlation would still be 1 here; concordance drops for squeezed or shifted values
    squeezed = concordance(true, strength, [v / 2 for v in exact], "valence")
    shifted = concordance(true, strength, [v + 0.3 for v in exact], "valence")
    assert 0.5 < squeezed < 0.9 and 0.5 < shifted < 0.95
    assert concordance(true, strength, [-v for v in exact], "valence") < -0.9
    # clips without a prediction or a circumplex point are left out
    assert concordance(["angry", "grumpy"], [None, None], [0.1, 0.2], "arousal") is None


def test_short_augmentation_keeps_half_to_one_second_of_speech():
    from emotion_monitor.models.training.augment import augment
    from emotion_monitor.streamer.decode import load_audio

    x = load_audio(RAVDESS / ravdess_rows("test")[0]["path"])
    y = augment(x, "short", seed=0)
    assert len(y) == 32000 and np.array_equal(y, augment(x, "short", seed=0))
    frames = y.reshape(-1, 320).astype(np.float64)
    energy_db = 10 * np.log10(np.mean(frames**2, 1) + 1e-12)
    loud = np.flatnonzero(energy_db > energy_db.max() - 25) * 320 / 16000
    assert 0.3 <= loud[-1] - loud[0] + 0.02 <= 1.05  # the speech spans 0.5-1 s (faded edges)
    assert not np.array_equal(y, augment(x, "short", seed=1))


def test_train_on_two_corpora_records_each(tmp_path, capsys):
    # Two "corpora" (RAVDESS actors under two manifests, one without the calm class): the heads
    # know every class either has, the config records both corpora, CV and test figures per corpus.
    one = _subset(1, {"Actor_01", "Actor_02"}, "train") + _subset(1, {"Actor_20"}, "test")
    two = [
        r
        for r in _subset(1, {"Actor_03", "Actor_04"}, "train") + _subset(1, {"Actor_21"}, "test")
        if r["emotion"] != "calm"
    ]
    _write_manifest(tmp_path / "first.csv", one)
    _write_manifest(tmp_path / "second.csv", two)
    out = tmp_path / "heads"
    argv = ["train", "--manifest", str(tmp_path / "first.csv")]
    argv += ["--manifest", str(tmp_path / "second.csv"), "--root", str(RAVDESS)]
    argv += ["--encoder", "whisper-tiny", "--augment", "clean", "--layers", "2"]
    argv += ["--out", str(out), "--cache", str(tmp_path / "cache"), "--backend", "torch"]
    assert cli(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["corpora"] == {"first": len(one) - 8, "second": len(two) - 7}
    assert "calm" in config["labels"]
    assert config["train"]["class_weight"] == "cell"
    assert {"ua_first", "ua_second"} <= set(config["train"]["cv"])
    assert set(config["test"]["corpora"]) == {"first", "second"}
    assert "first" in capsys.readouterr().out
