"""Where a checkpoint lives: a local directory, or a Hugging Face hub id resolved to its snapshot.

Hub ids behave the way transformers users expect: downloaded when the hub is reachable, read from
the local Hugging Face cache when it is not or when ``HF_HUB_OFFLINE=1``. Every loader then reads
the returned directory with ``local_files_only=True``, so only this module ever touches the hub.
"""

from __future__ import annotations

from pathlib import Path

# Only the package and its constants at import: `huggingface_hub.snapshot_download` is loaded on
# first use (the package's lazy attributes), which keeps the HTTP stack out of a cheap import.
import huggingface_hub
from emotion_monitor.models.base import ModelError, first_line, refuse_missing_folder
from huggingface_hub import constants

#: What a transformers audio checkpoint needs (configs, extractor, weights); a hub repository may
#: also hold ONNX/TF/Flax copies, audio samples or a second weights format that are never read.
CONFIG_FILES = ["config.json", "preprocessor_config.json", "*.safetensors.index.json"]
SAFETENSORS = ["*.safetensors"]
TORCH_BIN = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def is_hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) was set when huggingface_hub was
    imported: the flag it obeys itself."""
    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(location: str | Path, what: str = "model directory") -> Path:
    """The local directory a checkpoint spec names: a directory is itself; ``org/name`` (or
    ``org/name@revision``) is its Hugging Face snapshot, downloaded when the hub is reachable and
    taken from the local cache otherwise. Raises ModelError naming the problem and what to do.

    ``what`` names the folder in the message for a path that does not exist.
    """
    location = str(location)
    if Path(location).expanduser().is_dir():
        return Path(location).expanduser()
    refuse_missing_folder(location, what)
    repo_id, _, revision = location.partition("@")
    offline = is_hub_offline()
    try:
        folder = _snapshot(repo_id, revision or None, offline, CONFIG_FILES + SAFETENSORS)
        if not any(folder.glob("*.safetensors")):  # older checkpoints ship only pytorch_model.bin
            folder = _snapshot(repo_id, revision or None, offline, TORCH_BIN)
    except ValueError as exc:  # HFValidationError: not the shape of a hub id
        raise ModelError(
            f"{location}: not a local directory and not a Hugging Face hub id ({first_line(exc)})"
        ) from exc
    except huggingface_hub.errors.LocalEntryNotFoundError as exc:
        raise ModelError(_not_cached(location, offline, exc)) from exc
    except OSError as exc:  # the hub answered: no such repository or revision, gated, ...
        raise ModelError(f"{location}: cannot download from the hub ({first_line(exc)})") from exc
    return folder


def _snapshot(repo_id: str, revision: str | None, offline: bool, patterns: list[str]) -> Path:
    # Online, huggingface_hub itself falls back to the cached snapshot on connection errors,
    # timeouts and hub outages (silently: it does not say it did); offline, it opens no connection.
    return Path(
        huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline
        )
    )


def _not_cached(location: str, offline: bool, exc: Exception) -> str:
    """The message for a hub id that is neither cached nor downloadable right now."""
    if offline:
        why = "HF_HUB_OFFLINE is set"
    else:
        reason = exc.__cause__ or exc  # the connection error huggingface_hub chained
        why = f"the hub could not be reached ({first_line(reason)})"
    return (
        f"{location}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}, "
        "so it cannot be downloaded; run once where the hub is reachable (without HF_HUB_OFFLINE) "
        "to cache it, or pass a local directory holding the checkpoint"
    )
