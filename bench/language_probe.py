"""What the default model says about one flat sentence in 12 languages (a probe, not a score).

Usage: python bench/language_probe.py [--model SPEC]

espeak-ng (Debian package) reads the same sentence in each language at 2 speeds x 3 pitches; the
audio is cut into the engine's 2 s windows (0.5 s hop) and each window is classified. Prints, per
language, the mean valence/arousal and the most frequent classes. A synthetic voice read without
expression should come out calm or neutral everywhere; where it does not, the words' language
alone moves the output. No emotional speech in other languages is installable offline, so this
is the only cross-language check available; it measures a formant synthesiser, not people.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SENTENCES = {
    "en-us": "The meeting is scheduled for Tuesday afternoon in the second room.",
    "de": "Das Treffen ist für Dienstag Nachmittag im zweiten Raum geplant.",
    "fr-fr": "La réunion est prévue mardi après-midi dans la deuxième salle.",
    "es": "La reunión está programada para el martes por la tarde en la segunda sala.",
    "it": "La riunione è prevista per martedì pomeriggio nella seconda sala.",
    "pt-br": "A reunião está marcada para terça-feira à tarde na segunda sala.",
    "ru": "Встреча назначена на вторник после обеда во второй комнате.",
    "pl": "Spotkanie zaplanowano na wtorek po południu w drugiej sali.",
    "tr": "Toplantı salı öğleden sonra ikinci odada yapılacak.",
    "hi": "बैठक मंगलवार दोपहर दूसरे कमरे में निर्धारित है।",
    # espeak-ng reads Chinese characters and kanji as English words ("Chinese letter"): Mandarin
    # goes in as tone-numbered pinyin to the pinyin voice, Japanese in kana
    "cmn-latn-pinyin": "hui4 yi4 an1 pai2 zai4 xing1 qi1 er4 xia4 wu3 de5 di4 er4 ge4 fang2 jian1",
    "ja": "かいぎは かようびの ごごに にばんめの へやで よていされています。",
}
WINDOW, HOP = 32_000, 8_000  # the engine's defaults at 16 kHz


def _check_voice(lang: str, text: str) -> None:
    # a voice that falls back to English for some words would measure English, not the language
    phonemes = subprocess.run(
        ["espeak-ng", "-v", lang, "-q", "-x", text], check=True, capture_output=True, text=True
    ).stdout
    if "(en)" in phonemes:
        raise SystemExit(f"espeak-ng's {lang} voice reads part of {text!r} as English: {phonemes}")


def _speak(lang: str, text: str, speed: int, pitch: int, out: Path) -> np.ndarray:
    from emotion_monitor.streamer.audio import load_audio

    cmd = ["espeak-ng", "-v", lang, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
    subprocess.run(cmd, check=True, capture_output=True)
    return load_audio(out)  # resampled to 16 kHz mono


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    args = ap.parse_args()
    from emotion_monitor.models.registry import load_model

    model = load_model(args.model, device="cpu")
    overall: collections.Counter = collections.Counter()
    angry_share = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang, text in SENTENCES.items():
            _check_voice(lang, text)
            labels, va = collections.Counter(), []
            for speed in (140, 175):
                for pitch in (30, 50, 70):
                    x = _speak(lang, text, speed, pitch, Path(tmp) / "say.wav")
                    starts = range(0, max(1, len(x) - WINDOW + 1), HOP)
                    for p in model.predict([x[s : s + WINDOW] for s in starts]):
                        labels[max(p.classes, key=p.classes.get)] += 1
                        va.append((p.valence, p.arousal))
            overall.update(labels)
            angry_share.append(labels["angry"] / len(va))
            v, a = np.mean(va, axis=0)
            top = ", ".join(f"{k} {n}" for k, n in labels.most_common(3))
            print(f"{lang[:6]:6s} windows {len(va):3d}  valence {v:+.2f}  arousal {a:+.2f}  {top}")
    total = sum(overall.values())
    print("all    " + ", ".join(f"{k} {n / total:.0%}" for k, n in overall.most_common()))
    # languages yield different numbers of windows: the mean over languages weighs each the same
    print(f"angry, mean over languages: {np.mean(angry_share):.0%}")


if __name__ == "__main__":
    main()
