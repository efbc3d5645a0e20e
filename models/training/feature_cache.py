"""Training features: the embedder for an encoder spec, pooled features of manifest rows (with
their augmentations) and the on-disk cache keyed by file content, so a second run with the same
data and encoder never re-runs the encoder.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import SAMPLE_RATE, ModelError
from emotion_monitor.models.encoders.backends import WhisperOrtEmbedder, WhisperTorchEmbedder
from emotion_monitor.models.encoders.pooling import MIN_SAMPLES, layer_columns
from emotion_monitor.models.encoders.wav2vec2 import Wav2Vec2Embedder
from emotion_monitor.models.training.augment import RANDOM_AUGMENTATIONS, augment
from emotion_monitor.models.training.manifest import Row
from emotion_monitor.streamer.decode import load_audio
from tqdm import tqdm


def make_embedder(
    encoder: str, device: str = "cpu", input_norm: str = "none", layers=None, backend: str = "torch"
):
    """An embedder (``.name``, ``.feature_dim``, ``.layers``, ``.embed(windows)``) for a spec:
    ``whisper-base``, ``whisper-tiny`` or a wav2vec2-family hub id / local directory.
    ``backend`` "ort-int8" / "ort-fp32" computes Whisper features with the ONNX encoder."""
    if encoder in ("whisper-base", "whisper-tiny") and backend != "torch":
        return WhisperOrtEmbedder(encoder, layers=layers, backend=backend, input_norm=input_norm)
    if encoder in ("whisper-base", "whisper-tiny"):
        return WhisperTorchEmbedder(encoder, layers=layers, device=device, input_norm=input_norm)
    if encoder.startswith("whisper"):  # else it would be looked up as a hub id, in vain
        raise ModelError(f"unknown Whisper encoder {encoder!r}; use whisper-base or whisper-tiny")

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
        return (
            f"only {1000 * x.size / SAMPLE_RATE:.0f} ms of audio (at least {MIN_SAMPLES // 16} ms)"
        )
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
