"""Real-audio helpers for tests (importable by any test module: ``from audio_fixtures import ...``).

- :func:`espeak` / :func:`espeak_16k`: speech synthesized by espeak-ng (Debian package), cached.
- :func:`dialogue_16k`: calm speech, a pause, agitated speech, as 16 kHz float32.
- :func:`ravdess_path` / :func:`ravdess_16k`: clips of the shared RAVDESS set (CC BY-NC-SA 4.0).
- :func:`write_wav`, :func:`to_pcm`: write fixtures as files or raw PCM bytes.
- :func:`default_model_once`: the shipped default model, loaded once per process.
- :class:`PulseServer`: a private PulseAudio daemon with a null sink whose monitor acts as a
  virtual microphone; the real PortAudio capture thread records what :meth:`PulseServer.play`
  plays into it.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAVDESS = SHARED / "datasets" / "ravdess_speech_16k"
SR = 16_000
_CACHE = Path(tempfile.gettempdir()) / f"emotion-monitor-test-audio-{os.getuid()}"


# -- speech --------------------------------------------------------------------------------------


def espeak(text: str, speed: int = 160, pitch: int = 50, amplitude: int = 100) -> Path:
    """A wav file (22.05 kHz mono) of espeak-ng saying ``text``; cached across tests and runs."""
    from emotion_monitor.streamer.sources.demo import synthesize_speech

    _CACHE.mkdir(exist_ok=True)
    key = _key(text, speed, pitch, amplitude)
    path = _CACHE / f"espeak-{key}.wav"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.wav")
        synthesize_speech(text, tmp, speed, pitch, amplitude)
        tmp.replace(path)  # atomic, so parallel test runs never read a half-written file
    return path


def _key(*parts) -> str:
    import hashlib

    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def espeak_16k(text: str, speed: int = 160, pitch: int = 50, amplitude: int = 100) -> np.ndarray:
    """:func:`espeak` decoded to 16 kHz mono float32."""
    from emotion_monitor.streamer.decode import load_audio

    return load_audio(espeak(text, speed, pitch, amplitude))


CALM_TEXT = "Hello, thank you for calling. Please take your time, there is no rush at all."
ANGRY_TEXT = "This is the third time I am calling! Nothing works! Fix it right now!"


@lru_cache(maxsize=1)
def _dialogue() -> np.ndarray:
    calm = espeak_16k(CALM_TEXT, speed=140, pitch=35, amplitude=70)
    angry = espeak_16k(ANGRY_TEXT, speed=210, pitch=80, amplitude=200)
    return np.concatenate([calm, np.zeros(SR, np.float32), angry])


def dialogue_16k() -> np.ndarray:
    """Calm espeak-ng speech, 1 s of silence, agitated speech (about 10 s, 16 kHz float32)."""
    return _dialogue().copy()


def ravdess_path(emotion: str, speaker: str = "Actor_19", intensity: str = "strong") -> Path:
    """A RAVDESS clip (2.39 s, 16 kHz FLAC) of ``emotion`` by ``speaker``; test split by default."""
    with open(RAVDESS / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if (
                row["emotion"] == emotion
                and row["speaker"] == speaker
                and (emotion == "neutral" or row["intensity"] == intensity)
            ):
                return RAVDESS / row["path"]
    raise LookupError(f"no RAVDESS clip {emotion}/{speaker}/{intensity}")


def ravdess_16k(emotion: str, speaker: str = "Actor_19") -> np.ndarray:
    """A RAVDESS clip as 16 kHz mono float32."""
    from emotion_monitor.streamer.decode import load_audio

    return load_audio(ravdess_path(emotion, speaker))


def write_wav(
    path: str | Path, samples: np.ndarray, rate: int = SR, subtype: str = "FLOAT"
) -> Path:
    """Write float samples ((n,) or (n, channels)) to a file; the format follows the suffix."""
    import soundfile as sf

    sf.write(str(path), samples, rate, subtype=subtype)
    return Path(path)


def to_pcm(samples: np.ndarray, sample_format: str = "s16le") -> bytes:
    """Interleaved raw PCM bytes of float samples ((n,) or (n, channels))."""
    x = np.asarray(samples, np.float32)
    if sample_format == "f32le":
        return x.astype("<f4").tobytes()
    return (np.clip(x, -1, 32767 / 32768) * 32768).round().astype("<i2").tobytes()


# -- a deterministic model ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def default_model_once():
    """The shipped default model, loaded once per test process (tests that need a real model
    outside pytest fixtures, e.g. in helper threads)."""
    from emotion_monitor.models import load_model

    return load_model(None, device="cpu")


class PulseServer:
    """A private PulseAudio daemon (its own socket, never the user's) with a null sink ``virt``.

    The null sink's monitor is the default source, so PortAudio's ``pulse`` ALSA device records
    whatever :meth:`play` plays. ``env`` holds ``PULSE_SERVER`` for subprocesses; use
    :meth:`activate` to point this process's PortAudio at it. The daemon is this object's child
    and :meth:`stop` (or leaving the ``with`` block) kills it, so nothing is left running.
    """

    def __init__(self, folder: str | Path | None = None, timeout: float = 20.0):
        for tool in ("pulseaudio", "pactl", "paplay"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (Debian package pulseaudio)")
        self._tmp = tempfile.TemporaryDirectory(prefix="pulse-") if folder is None else None
        self.folder = Path(folder or self._tmp.name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = self.folder / "native"
        self.server = f"unix:{self.socket}"
        self.env = {**os.environ, "PULSE_SERVER": self.server}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._saved_env: str | None = None

    def start(self) -> PulseServer:
        """Start the daemon; wait (polling ``pactl info``, up to ``timeout``) until it is ready."""
        env = {
            **os.environ,
            "PULSE_RUNTIME_PATH": str(self.folder),
            "PULSE_STATE_PATH": str(self.folder),
        }
        cmd = "pulseaudio -n --daemonize=no --exit-idle-time=-1 --use-pid-file=no".split()
        cmd += ["-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1"]
        cmd += ["-L", "module-null-sink sink_name=virt", "-L", "module-always-sink"]
        self.log = open(self.folder / "pulseaudio.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pulseaudio exited: {(self.folder / 'pulseaudio.log').read_text()}"
                )
            if self.socket.exists() and self.pactl("info", check=False).returncode == 0:
                self.pactl("set-default-source", "virt.monitor")
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"pulseaudio not ready within {self.timeout} s")

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``pactl`` against this server."""
        proc = subprocess.run(
            ["pactl", f"--server={self.server}", *args], capture_output=True, text=True, timeout=10
        )
        if check and proc.returncode:
            raise RuntimeError(f"pactl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def play(self, path: str | Path, sink: str = "virt") -> subprocess.Popen:
        """Start ``paplay`` of a file into ``sink``; returns the process (wait on it)."""
        return subprocess.Popen(
            ["paplay", f"--server={self.server}", f"--device={sink}", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def module_index(self, needle: str = "sink_name=virt") -> str:
        """Index of the first loaded module whose line contains ``needle``."""
        for line in self.pactl("list", "short", "modules").stdout.splitlines():
            if needle in line:
                return line.split()[0]
        raise LookupError(needle)

    def activate(self) -> None:
        """Point this process's PortAudio at the server (re-initialises PortAudio)."""
        import sounddevice as sd

        self._saved_env = os.environ.get("PULSE_SERVER")
        os.environ["PULSE_SERVER"] = self.server
        sd._terminate()
        sd._initialize()

    def deactivate(self) -> None:
        """Undo :meth:`activate`."""
        import sounddevice as sd

        if self._saved_env is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = self._saved_env
        sd._terminate()
        sd._initialize()

    def kill(self) -> None:
        """Kill the daemon abruptly (the virtual microphone vanishes)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Terminate the daemon and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
