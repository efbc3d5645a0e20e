"""Shared fixtures: the shared dataset, real speech clips and the (session-wide) default model."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

# Test modules import helpers from this module and also load it as a plugin (its fixtures);
# registering it first keeps pytest's assertion rewriting for it (and silences the warning).
pytest.register_assert_rewrite("published_fixtures")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAVDESS = SHARED / "datasets" / "ravdess_speech_16k"


def ravdess_rows(split: str | None = None) -> list[dict]:
    """Rows of the RAVDESS manifest (optionally one split)."""
    with open(RAVDESS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]


def ravdess_clip(
    emotion: str, intensity: str = "strong", speaker: str = "Actor_19", sentence_index: int = 0
) -> Path:
    """Path of a RAVDESS test-split clip with the given emotion and intensity."""
    rows = [
        r
        for r in ravdess_rows()
        if r["emotion"] == emotion
        and r["speaker"] == speaker
        and (emotion == "neutral" or r["intensity"] == intensity)
    ]
    if not rows:
        pytest.skip(f"no RAVDESS clip for {emotion}/{intensity}/{speaker}")
    return RAVDESS / rows[sentence_index % len(rows)]["path"]


def load_clip(path: Path) -> np.ndarray:
    """A clip as 16 kHz mono float32."""
    from emotion_monitor.streamer.decode import load_audio

    return load_audio(path)


@pytest.fixture(scope="session")
def default_model():
    """The shipped default model, loaded once for the whole test session."""
    from emotion_monitor.models import load_model

    return load_model(None, device="cpu")


@pytest.fixture(scope="session")
def real_model(default_model):
    """The shipped default model, under the name the call tests use."""
    return default_model


# -- server fixtures (tests/test_server*.py, test_dashboard*.py) ----------------------------


def combine_models(classifier, regressor):
    """One model from two real ones: class probabilities from ``classifier``, valence/arousal
    from ``regressor``. Lets server and dashboard tests see every kind of output."""
    from emotion_monitor.models.base import EmotionModel, Prediction

    class Both(EmotionModel):
        name = "tiny-test-model"
        labels = classifier.labels
        has_valence_arousal = True

        def predict(self, windows):
            pairs = zip(classifier.predict(windows), regressor.predict(windows), strict=True)
            return [Prediction(c.classes, r.valence, r.arousal) for c, r in pairs]

    return Both()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """Directories of a tiny random wav2vec2 classifier ("classifier") and a tiny ViT
    valence/arousal regressor ("regressor"), in the published on-disk formats."""
    from published_fixtures import make_vit_va, make_wav2vec2_classifier

    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "classifier": make_wav2vec2_classifier(root / "w2v"),
        "regressor": make_vit_va(root / "vit"),
    }


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoints):
    """A fast real model: both tiny checkpoints loaded through the real adapters, combined."""
    from emotion_monitor.models import load_model

    classifier = load_model(str(tiny_checkpoints["classifier"]), device="cpu")
    regressor = load_model(str(tiny_checkpoints["regressor"]), device="cpu")
    return combine_models(classifier, regressor)


@pytest.fixture()
def browser():
    """Debian's chromium through playwright, with a fake microphone playing real speech."""
    playwright = pytest.importorskip("playwright.sync_api")
    from browser_fixtures import CHROMIUM, CHROMIUM_ARGS, fake_mic_wav  # lazy: imports this module

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS
            + [
                # A fake microphone that plays a file: the mic button can be tested for real.
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={fake_mic_wav()}",
            ],
        )
        yield browser
        browser.close()
