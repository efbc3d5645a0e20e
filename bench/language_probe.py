"""What the default model says about one flat sentence in many languages (a probe, not a score).

Usage: python bench/language_probe.py [--voices espeak|mbrola] [--model SPEC]

Each voice reads the same sentence at 2 speeds x 3 pitches; the audio is cut into the engine's
2 s windows (0.5 s hop) and each window is classified. Prints, per voice, the mean
valence/arousal and the most frequent classes. Speech read without expression should come out
calm or neutral everywhere; where it does not, something other than emotion moves the output.
No emotional speech in other languages is installable offline, so synthetic speech is the only
cross-language check available.

--voices espeak (default): espeak-ng's formant synthesiser in 12 languages. One buzzy synthetic
    voice: it confounds the language of the words with how the synthesiser renders them.
--voices mbrola: MBROLA diphone voices, built from recordings of real speakers, 35 voices in 22
    languages, and 11 of the same voices reading the English sentence. A voice that is called
    angry in its own language but not in English points at the language; one called angry in
    both points at the voice. Needs Debian's contrib and non-free components (add
    "contrib non-free" to the Components of /etc/apt/sources.list.d/debian.sources, then
    `apt-get update`), then `apt-get install mbrola` and one package per voice (voice mb-us1 or
    mb-de1-en: package mbrola-us1 or mbrola-de1). Voices not installed are skipped. Rows say
    how many diphones a voice's set lacked (MBROLA reads them as silence, and such voices
    render slightly differently from run to run, so their rows can move by a window or two).

The espeak-ng voices all come with Debian's espeak-ng package, so a missing one stops the probe.
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
    # the languages below are read by MBROLA voices only
    "pt-pt": "A reunião está marcada para terça-feira à tarde na segunda sala.",
    "ro": "Întâlnirea este programată marți după-amiază în a doua sală.",
    "hu": "A megbeszélés kedd délutánra van tervezve a második teremben.",
    "cs": "Schůzka je naplánována na úterý odpoledne ve druhé místnosti.",
    "nl": "De vergadering is gepland op dinsdagmiddag in de tweede zaal.",
    "sv": "Mötet är planerat till tisdag eftermiddag i det andra rummet.",
    "el": "Η συνάντηση έχει προγραμματιστεί για την Τρίτη το απόγευμα στη δεύτερη αίθουσα.",
    "fa": "جلسه برای سه‌شنبه بعدازظهر در اتاق دوم برنامه‌ریزی شده است.",
    "hr": "Sastanak je zakazan za utorak poslijepodne u drugoj sobi.",
    "et": "Koosolek on planeeritud teisipäeva pärastlõunaks teise ruumi.",
    "lt": "Susitikimas numatytas antradienio popietę antrame kambaryje.",
    "id": "Rapat dijadwalkan pada hari Selasa sore di ruang kedua.",
}
ESPEAK_VOICES = {lang: lang for lang in list(SENTENCES)[:12]}
# MBROLA voice -> the language of the sentence it reads; "-en" voices are the same speakers'
# diphones driven by espeak-ng's English rules
MBROLA_VOICES = {
    **dict.fromkeys(["mb-en1", "mb-us1", "mb-us2", "mb-us3"], "en-us"),
    **dict.fromkeys(["mb-de1", "mb-de2"], "de"),
    **dict.fromkeys(["mb-fr1", "mb-fr4"], "fr-fr"),
    **dict.fromkeys(["mb-es1", "mb-es3"], "es"),
    **dict.fromkeys(["mb-it3", "mb-it4"], "it"),
    **dict.fromkeys(["mb-br1", "mb-br4"], "pt-br"),
    **dict.fromkeys(["mb-tr1", "mb-tr2"], "tr"),
    **dict.fromkeys(["mb-nl2", "mb-nl3"], "nl"),
    **dict.fromkeys(["mb-sw1", "mb-sw2"], "sv"),
    **dict.fromkeys(["mb-in1", "mb-in2"], "hi"),
    **dict.fromkeys(["mb-jp1", "mb-jp2"], "ja"),
    **{"mb-pt1": "pt-pt", "mb-pl1": "pl", "mb-ro1": "ro", "mb-hu1": "hu", "mb-cz2": "cs"},
    **{"mb-gr2": "el", "mb-ir1": "fa", "mb-cr1": "hr", "mb-ee1": "et", "mb-lt1": "lt"},
    "mb-id1": "id",
    **dict.fromkeys(
        [f"mb-{v}-en" for v in "de1 de2 fr1 fr4 pl1 ro1 hu1 nl2 sw1 sw2 gr2".split()], "en-us"
    ),
}
ENGLISH_SPEAKERS = ("mb-en1", "mb-us1", "mb-us2", "mb-us3")
WINDOW, HOP = 32_000, 8_000  # the engine's defaults at 16 kHz


def _voice_problem(voice: str, text: str) -> str | None:
    """Why this voice cannot be probed (not installed, reads part of the text as English)."""
    try:
        done = subprocess.run(["espeak-ng", "-v", voice, "-q", "-x", text], capture_output=True)
    except FileNotFoundError:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng") from None
    if done.returncode:
        return "not installed"
    phonemes = done.stdout.decode()
    # a voice that falls back to English for some words would measure English, not the language
    if "(en)" in phonemes and not voice.endswith("-en"):
        return f"reads part of {text!r} as English: {phonemes}"
    return None


def _speak(voice: str, text: str, speed: int, pitch: int, out: Path) -> tuple[np.ndarray, int]:
    """The voice's audio at 16 kHz mono and how many diphones MBROLA lacked (read as silence)."""
    from emotion_monitor.streamer.decode import load_audio

    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return load_audio(out), done.stderr.count("unknown, replaced")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", choices=("espeak", "mbrola"), default="espeak")
    ap.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    args = ap.parse_args()
    from emotion_monitor.models.registry import load_model

    voices = ESPEAK_VOICES if args.voices == "espeak" else MBROLA_VOICES
    model = load_model(args.model, device="cpu")
    overall: collections.Counter = collections.Counter()
    angry_share: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for voice, lang in voices.items():
            text = SENTENCES[lang]
            problem = _voice_problem(voice, text)
            if problem == "not installed" and args.voices == "mbrola":
                print(f"{voice:10s} skipped: not installed")
                continue
            if problem:
                raise SystemExit(f"espeak-ng voice {voice}: {problem}")
            labels, va, missing = collections.Counter(), [], 0
            for speed in (140, 175):
                for pitch in (30, 50, 70):
                    x, lacked = _speak(voice, text, speed, pitch, Path(tmp) / "say.wav")
                    missing = max(missing, lacked)
                    starts = range(0, max(1, len(x) - WINDOW + 1), HOP)
                    for p in model.predict([x[s : s + WINDOW] for s in starts]):
                        labels[max(p.classes, key=p.classes.get)] += 1
                        va.append((p.valence, p.arousal))
            overall.update(labels)
            angry_share[voice] = labels["angry"] / len(va)
            v, a = np.mean(va, axis=0)
            top = ", ".join(f"{k} {n}" for k, n in labels.most_common(3))
            gaps = f"  ({missing} diphones missing)" if missing else ""
            print(
                f"{voice[:10]:10s} {lang[:6]:6s} windows {len(va):3d}  valence {v:+.2f}  "
                f"arousal {a:+.2f}  {top}{gaps}"
            )
    if not angry_share:
        raise SystemExit("no voice could be probed: install espeak-ng (and mbrola voices)")
    total = sum(overall.values())
    print("all    " + ", ".join(f"{k} {n / total:.1%}" for k, n in overall.most_common()))
    # voices yield different numbers of windows: the mean over voices weighs each the same
    print(f"angry, mean over voices: {np.mean(list(angry_share.values())):.0%}")
    if args.voices == "mbrola":
        reading = {
            "their own (non-English) language": [
                s for v, s in angry_share.items() if MBROLA_VOICES[v] != "en-us"
            ],
            "English": [s for v, s in angry_share.items() if MBROLA_VOICES[v] == "en-us"],
        }
        for what, shares in reading.items():
            if shares:  # a partial install may lack one group
                mean = np.mean(shares)
                print(f"angry, mean over {len(shares)} voices reading {what}: {mean:.0%}")


if __name__ == "__main__":
    main()
