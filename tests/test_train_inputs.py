"""`emotion-monitor train` on the manifests and files researchers bring: malformed rows, bad
audio, other labels and splits, repeated files, local checkpoints and output folders.

Training runs on real RAVDESS clips through a tiny random wav2vec2 checkpoint (the real loading
and embedding code, seconds per run)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import RAVDESS, load_clip, ravdess_rows
from emotion_monitor.models.base import ModelError
from emotion_monitor.models.training.heads import fit_lda, train_heads
from emotion_monitor.models.training.manifest import read_manifest
from emotion_monitor.streamer.cli import main as cli
from published_fixtures import make_wav2vec2_encoder as make_checkpoint

pytestmark = pytest.mark.slow  # training on tiny checkpoints

FIELDS = ["path", "speaker", "emotion", "intensity", "split"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("w2v") / "tiny")


def clips(emotions=("angry", "sad", "calm"), speakers=("Actor_01", "Actor_02"), per: int = 2):
    """RAVDESS rows (absolute paths), ``per`` clips of each emotion and speaker."""
    rows, seen = [], {}
    for r in ravdess_rows("train"):
        key = (r["speaker"], r["emotion"])
        if r["speaker"] in speakers and r["emotion"] in emotions and seen.get(key, 0) < per:
            seen[key] = seen.get(key, 0) + 1
            rows.append({**r, "path": str(RAVDESS / r["path"])})
    return rows


def write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
    return path


def train(tmp_path, manifest, encoder, out="heads", *extra):
    argv = ["train", "--manifest", str(manifest), "--encoder", str(encoder), "--layers", "1,3"]
    argv += ["--augment", "clean", "--folds", "2", "--shrinkage", "0.5", "--alpha", "10"]
    argv += ["--out", str(tmp_path / out), "--cache", str(tmp_path / "cache"), *extra]
    return cli(argv)


# --------------------------------------------------------------------------- manifests


def test_manifest_headers_any_case_and_encoding_errors_name_the_file(tmp_path):
    good = tmp_path / "caps.csv"
    good.write_text(" Path ,Emotion,SPEAKER\r\nclip.wav, Angry ,a1\r\n", encoding="utf-8-sig")
    (row,) = read_manifest(good)
    assert (row.path, row.emotion, row.speaker, row.line) == (
        tmp_path / "clip.wav",
        "angry",
        "a1",
        2,
    )
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,emotion\nd\xe9j\xe0.wav,sad\n".encode("latin-1"))
    with pytest.raises(ModelError, match=r"latin.csv: not UTF-8 text \(byte 14\)"):
        read_manifest(latin)
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("path\temotion\nx.wav\tsad\n")
    with pytest.raises(ModelError, match=r"missing column\(s\) emotion, path \(the header has"):
        read_manifest(tabs)


def test_malformed_rows_are_described_by_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,emotion,speaker\n"
        "a.wav,sad,s1\n"
        ",sad,s1\n"  # line 3: no path
        "b.wav,,s1\n"  # line 4: no emotion
        "c.wav\n"  # line 5: too few fields
        "d,e.wav,sad,s1\n"  # line 6: an unquoted comma
        "f.wav,happy,s2,\n"  # line 7: a trailing empty field is harmless
    )
    problems: list[str] = []
    rows = read_manifest(manifest, problems=problems)
    assert [r.path.name for r in rows] == ["a.wav", "f.wav"]
    assert problems == [
        f"{manifest}: line 3: empty path",
        f"{manifest}: line 4: empty emotion",
        f"{manifest}: line 5: 1 field(s), the header has 3",
        f"{manifest}: line 6: 4 fields, the header has 3 (a comma inside a value that is not "
        "quoted?)",
    ]
    # callers without a problem list (evaluate) still get every row, as before
    assert len(read_manifest(manifest)) == 6


# --------------------------------------------------------------------------- train


def test_train_reports_each_unusable_row_and_trains_on_the_rest(tmp_path, checkpoint, capsys):
    rows = clips()  # 12 clips: 3 emotions x 2 speakers x 2
    x = load_clip(rows[0]["path"])
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 16000)
    sf.write(tmp_path / "blank.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "short.wav", x[16000:16160], 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    # a stereo 8 kHz copy and an MP3 are fine: decoded to 16 kHz mono
    sf.write(tmp_path / "stereo8k.wav", np.stack([x[::2], x[::2]], 1), 8000)
    sf.write(tmp_path / "clip.mp3", x, 16000, format="MP3")
    base = {"speaker": "Actor_01", "emotion": "sad", "split": "train"}
    extra = [
        {**base, "path": str(tmp_path / name)}  # lines 14-19
        for name in ("silent.wav", "blank.wav", "short.wav", "empty.wav", "missing.wav")
    ] + [
        {**base, "path": str(tmp_path / "stereo8k.wav"), "emotion": "Angry"},  # line 19
        {**base, "path": str(tmp_path / "clip.mp3"), "split": "Train"},  # line 20
        {**rows[1], "emotion": "frustrated"},  # line 21: outside the vocabulary
        {**rows[2]},  # line 22: the same file again
        {**rows[3], "path": rows[3]["path"], "split": "val"},  # line 23: neither train nor test
        {**base, "path": str(tmp_path / "missing-test.wav"), "split": "TEST"},  # line 24
        {**rows[4], "split": "test"},  # line 25: scored at the end (and a repeat of line 6)
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows + extra)
    assert train(tmp_path, manifest, checkpoint) == 0
    out = capsys.readouterr().out
    for line, problem in [
        (14, "silent.wav: silent (every sample is 0)"),
        (15, "blank.wav: no audio samples"),
        (16, "short.wav: only 10 ms of audio (at least 100 ms)"),
        (17, "empty.wav: cannot decode"),
        (18, "missing.wav: No such file or directory"),
        (22, "repeats line 4, counted once"),
        (24, "missing-test.wav: No such file or directory"),
    ]:
        assert f"line {line}: " in out and problem in out, problem
    assert "labels outside the vocabulary" in out and "'frustrated' (1)" in out
    assert "split is neither train nor test" in out and "'val' (1)" in out
    assert "repeats line 6" in out  # the test row: a training clip never scores the heads
    assert out.count(str(tmp_path / "missing.wav")) == 1  # named once, not three times
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    # the 12 clips (their other rows were left out) + the stereo 8 kHz one + the MP3
    assert config["train"]["clips"] == 14
    assert config["test"]["clips"] == 0 and config["test"]["accuracy"] is None
    assert "14 training clips, 10 row(s) skipped (listed above)" in out


def test_heads_predict_the_labels_trained(tmp_path, checkpoint, capsys):
    from emotion_monitor.models.heads_model import load_model_dir

    rows = clips(("angry", "sad", "calm"))
    for r in rows:  # boredom is in the project's vocabulary, with its circumplex point
        r["emotion"] = "boredom" if r["emotion"] == "calm" else r["emotion"]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    assert train(tmp_path, manifest, checkpoint) == 0
    assert "labels angry, sad, boredom; 12 training clips" in capsys.readouterr().out
    model = load_model_dir(tmp_path / "heads", device="cpu")
    assert model.labels == ("angry", "sad", "boredom")
    (pred,) = model.predict([load_clip(rows[0]["path"])])
    assert set(pred.classes) == {"angry", "sad", "boredom"}
    # one emotion is not a classifier
    manifest = write_manifest(tmp_path / "one.csv", [r for r in rows if r["emotion"] == "sad"])
    assert train(tmp_path, manifest, checkpoint, "one") == 2
    assert "hold one emotion only (sad)" in capsys.readouterr().err


def test_cache_follows_the_checkpoint_weights(tmp_path, checkpoint):
    import shutil

    manifest = write_manifest(tmp_path / "m.csv", clips())
    encoder = tmp_path / "enc"
    shutil.copytree(checkpoint, encoder)
    assert train(tmp_path, manifest, encoder, "first") == 0
    make_checkpoint(encoder, seed=1)  # other weights saved over the old ones
    assert train(tmp_path, manifest, encoder, "second") == 0
    assert train(tmp_path, manifest, encoder, "fresh", "--no-cache") == 0
    heads = {k: (tmp_path / k / "heads.onnx").read_bytes() for k in ("first", "second", "fresh")}
    assert heads["second"] == heads["fresh"] != heads["first"]


def test_a_relative_checkpoint_folder_is_found_from_anywhere(tmp_path, checkpoint, monkeypatch):
    import shutil

    from emotion_monitor.models.heads_model import load_model_dir

    manifest = write_manifest(tmp_path / "m.csv", clips())
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint, tmp_path / "enc")
    assert train(tmp_path, manifest, "enc") == 0
    config = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert config["encoder"] == str(tmp_path / "enc")
    monkeypatch.chdir(RAVDESS)  # served from another folder, the checkpoint is still found
    assert load_model_dir(tmp_path / "heads", device="cpu").labels == ("angry", "calm", "sad")


def test_unwritable_out_fails_before_the_embedding(tmp_path, checkpoint, capsys):
    manifest = write_manifest(tmp_path / "m.csv", clips())
    (tmp_path / "file").write_text("not a folder")
    assert train(tmp_path, manifest, checkpoint, "file/heads") == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'file/heads'}: cannot write the heads there" in err
    assert "is not a folder" in err
    assert not (tmp_path / "cache").exists()  # nothing was embedded
    # an existing folder keeps its other files; only the two outputs are replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert train(tmp_path, manifest, checkpoint, "mine") == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "config.json",
        "heads.onnx",
        "notes.txt",
    ]


# --------------------------------------------------------------------------- heads


def test_lda_without_variation_inside_any_class_is_nearest_mean():
    # one clip per class: no within-class scatter to shrink; LDA still gives the nearest mean
    x = np.eye(3, 5) * 4.0
    w, b = fit_lda(x, np.arange(3), 3, shrinkage=0.5, balanced=True)
    assert np.array_equal((x @ w + b).argmax(1), np.arange(3))


def test_cross_validation_survives_a_speaker_with_one_clip():
    # a fold that trains on the small speaker alone holds a single row
    from emotion_monitor.models.training.heads import classifier_candidates

    rng = np.random.default_rng(0)
    y = np.arange(41) % 4
    x = rng.standard_normal((41, 30)) + 2.0 * np.eye(4, 30)[y]
    va = rng.uniform(-1, 1, (41, 2))
    groups = np.array(["big"] * 40 + ["small"])
    heads = train_heads(x, y, va, groups, classifier_candidates("lda", [0.5]), [1.0], 2)
    assert heads["folds"] == 2 and np.isfinite(heads["w_cls"]).all()


def test_an_encoder_that_does_not_exist_is_named(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.csv", clips(per=1))
    assert train(tmp_path, manifest, tmp_path / "no-such-checkpoint") == 2
    assert f"{tmp_path / 'no-such-checkpoint'}: no such checkpoint folder" in (
        capsys.readouterr().err
    )
    assert train(tmp_path, manifest, "whisper-small") == 2
    assert "unknown Whisper encoder 'whisper-small'; use whisper-base or whisper-tiny" in (
        capsys.readouterr().err
    )


def test_intensities_outside_normal_and_strong_are_named(tmp_path, checkpoint, capsys):
    rows = clips()
    rows[0] = {**rows[0], "intensity": "HIGH"}
    rows[1] = {**rows[1], "intensity": "high"}
    assert train(tmp_path, write_manifest(tmp_path / "m.csv", rows), checkpoint) == 0
    out = capsys.readouterr().out
    assert (
        "note: intensity values other than normal, strong get the unknown intensity's scale" in out
    )
    assert "'HIGH' (1), 'high' (1)" in out


def test_very_uneven_speakers_are_warned_about(tmp_path, checkpoint, capsys):
    rows = clips(speakers=("Actor_01",), per=5) + clips(speakers=("Actor_02",), per=1)
    assert train(tmp_path, write_manifest(tmp_path / "m.csv", rows), checkpoint) == 0
    out = capsys.readouterr().out
    assert "warning: speakers hold very different numbers of clips (Actor_02: 3, Actor_01: 15)" in (
        out
    )
