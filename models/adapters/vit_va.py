"""ViT valence/arousal regressor on mel-spectrogram images.

Spec: ``vit-va:DIR`` or a directory holding one ``*.pth`` state dict and the ViT ``config.json``.

Model: ``transformers.ViTModel`` (config from the directory, no pooler) whose CLS token goes
through LayerNorm -> Dropout -> Linear(hidden, 512) -> GELU -> Dropout -> Linear(512, 128) -> GELU
-> Dropout -> Linear(128, 2) -> Tanh, giving (valence, arousal) in [-1, 1]. The state dict holds
``vit.*`` (ViTModel) and ``head.*`` (the Sequential above, indices 0-9) keys; a ``module.`` prefix
(DataParallel), a single other head prefix (e.g. ``regressor.``) and unused ``vit.pooler.*`` keys
are accepted. It is read with ``torch.load(weights_only=True)``, which refuses pickled code.

Preprocessing (numpy only, shared with the ONNX Runtime path so both see identical pixels),
reproducing the usual librosa + PIL + torchvision training recipe without those dependencies:

1. 16 kHz audio -> 22.05 kHz (polyphase, 441/320).
2. Power spectrogram: periodic Hann window, n_fft 2048, hop 512, centred frames with zero padding
   (librosa >= 0.10 ``center=True, pad_mode="constant"``).
3. Mel filterbank with 128 bands, 0 Hz to Nyquist, Slaney mel scale (linear below 1 kHz,
   logarithmic above) and Slaney area normalisation (each triangle scaled by 2 / its width in Hz):
   librosa's default ``htk=False, norm="slaney"``.
4. dB relative to the maximum with ``amin`` 1e-10 and a floor ``top_db`` 80 below the peak
   (``librosa.power_to_db(S, ref=np.max, top_db=80)``).
5. Min-max scaling to 0-255 and quantisation to uint8 (the image the model was trained on);
   row 0 is the lowest mel band, as ``Image.fromarray`` would store the array.
6. Grey -> 3 identical channels, bilinear resize to ``image_size`` (224) with PIL-style
   antialiasing when shrinking (triangle filter widened by the scale), /255, ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from emotion_monitor.models.adapters.common import ExportPlan, GroupedAdapter, va_predictions
from emotion_monitor.models.base import SAMPLE_RATE, ModelError, Prediction, first_line
from emotion_monitor.models.features import mel_filterbank
from emotion_monitor.models.runtime import resolve_device

#: Preprocessing parameters; written to onnx_model.json on export so ORT uses the same ones.
MEL_PARAMS: dict = {
    "sample_rate": 22_050,
    "n_fft": 2048,
    "hop_length": 512,
    "n_mels": 128,
    "top_db": 80.0,
    "image_size": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def power_mel(
    samples: np.ndarray, sample_rate: int, n_fft: int, hop: int, n_mels: int
) -> np.ndarray:
    """Centred STFT power spectrogram projected on the mel filters: (n_mels, frames)."""
    x = np.pad(np.asarray(samples, dtype=np.float64), n_fft // 2)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n_frames]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return mel_filterbank(sample_rate, n_fft, n_mels) @ power.T


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres, triangle widened when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale
    dist = (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support
    w = np.maximum(0.0, 1.0 - np.abs(dist))
    return w / w.sum(axis=1, keepdims=True)


def mel_image(samples_16k: np.ndarray, params: dict = MEL_PARAMS) -> np.ndarray:
    """One 16 kHz window -> normalised (3, size, size) float32 image (see the module docstring)."""
    from scipy.signal import resample_poly  # lazy: scipy.signal

    sr = int(params["sample_rate"])
    x = resample_poly(np.asarray(samples_16k, dtype=np.float64), sr // 50, SAMPLE_RATE // 50)
    mel = power_mel(x, sr, int(params["n_fft"]), int(params["hop_length"]), int(params["n_mels"]))
    amin = 1e-10
    db = 10.0 * np.log10(np.maximum(mel, amin)) - 10.0 * np.log10(max(mel.max(), amin))
    db = np.maximum(db, db.max() - float(params["top_db"]))
    span = db.max() - db.min()
    grey = np.zeros_like(db) if span <= 0 else (db - db.min()) / span * 255.0
    grey = grey.astype(np.uint8).astype(np.float64)  # the uint8 image the model was trained on
    size = int(params["image_size"])
    img = _resize_matrix(grey.shape[0], size) @ grey @ _resize_matrix(grey.shape[1], size).T
    img = img / 255.0
    mean = np.asarray(params["mean"])[:, None, None]
    std = np.asarray(params["std"])[:, None, None]
    return ((img[None] - mean) / std).astype(np.float32)


def build_module(config):
    """The torch module: ViTModel + the regression head (layout fixed by the published weights)."""
    import torch  # lazy: torch
    from transformers import ViTModel  # lazy: transformers

    class ViTValenceArousal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = ViTModel(config, add_pooling_layer=False)
            h, p = config.hidden_size, config.hidden_dropout_prob
            nn = torch.nn
            self.head = nn.Sequential(
                nn.LayerNorm(h),
                nn.Dropout(p),
                nn.Linear(h, 512),
                nn.GELU(),
                nn.Dropout(p),
                nn.Linear(512, 128),
                nn.GELU(),
                nn.Dropout(p),
                nn.Linear(128, 2),
                nn.Tanh(),
            )

        def forward(self, pixel_values):
            return self.head(self.vit(pixel_values).last_hidden_state[:, 0])

    return ViTValenceArousal()


def _clean_state_dict(state: dict) -> dict:
    """Accept the common variations of how such a state dict gets saved."""
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("vit.pooler.")}
    other = {k.split(".")[0] for k in state if not k.startswith("vit.")}
    if len(other) == 1 and other != {"head"}:
        prefix = other.pop() + "."
        state = {
            ("head." + k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()
        }
    return state


class ViTValenceArousalModel(GroupedAdapter):
    """Valence and arousal from a ViT looking at the window's mel-spectrogram image."""

    labels = ()
    has_valence_arousal = True

    def __init__(self, module, location: str, device: str, params: dict = MEL_PARAMS):
        self.module = module
        self.location = location
        self.device = device
        self.params = dict(params)
        self.name = f"vit-va:{Path(location).name}"

    def _run(self, batch: list[np.ndarray]) -> list[Prediction]:
        import torch  # lazy: torch

        pixels = torch.from_numpy(np.stack([mel_image(w, self.params) for w in batch]))
        with torch.inference_mode():
            out = self.module(pixels.to(self.device)).float().cpu().numpy()
        return va_predictions(out)

    def describe(self) -> dict:
        """Name and outputs: valence/arousal only (the engine derives the quadrant)."""
        d = super().describe()
        d.update(kind="vit-va", outputs="valence and arousal in [-1, 1]; no classes")
        return d

    def export_plan(self) -> ExportPlan:
        """The ViT + head on preprocessed images; the mel image is computed in numpy."""
        module = self.module.to("cpu").eval()
        example = np.stack([mel_image(np.zeros(SAMPLE_RATE, np.float32) + 0.01, self.params)] * 2)
        meta = {
            "kind": "vit-va",
            "labels": [],
            "outputs": "valence_arousal",
            "name": self.name,
            "preprocess": {"kind": "vit_mel", **self.params},
        }
        return ExportPlan(
            module,
            example,
            "pixel_values",
            {"pixel_values": {0: "batch"}, "output": {0: "batch"}},
            meta,
        )


def load_vit_va(location: str, device: str = "auto") -> ViTValenceArousalModel:
    """Load ``DIR/config.json`` (ViT config) and the single ``DIR/*.pth`` state dict."""
    import torch  # lazy: torch
    from transformers import ViTConfig  # lazy: transformers

    path = Path(location)
    if not path.is_dir():
        raise ModelError(f"{location}: vit-va needs a local directory with config.json and a .pth")
    weights = sorted(path.glob("*.pth"))
    if len(weights) != 1:
        raise ModelError(f"{location}: expected exactly one .pth state dict, found {len(weights)}")
    if not (path / "config.json").is_file():  # ViTConfig would fall back to ViT-base defaults
        raise ModelError(f"{path / 'config.json'}: missing (the ViT config of the .pth)")
    try:
        config = ViTConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: not a ViT config ({exc})") from exc
    try:
        state = torch.load(weights[0], map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ModelError(
            f"{weights[0]}: cannot be read as a plain tensor state dict; truncated, corrupt or "
            f"holding pickled code? ({first_line(exc)})"
        ) from exc
    if not isinstance(state, dict):
        raise ModelError(f"{weights[0]}: expected a state dict, found {type(state).__name__}")
    module = build_module(config)
    try:
        result = module.load_state_dict(_clean_state_dict(state), strict=False)
    except RuntimeError as exc:  # shapes that do not fit the config (strict=False still checks)
        detail = "; ".join(str(exc).splitlines()[1:4]).strip()
        raise ModelError(f"{weights[0]}: does not fit {path / 'config.json'} ({detail})") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{weights[0]}: does not match ViT + head (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    dev = resolve_device(device)
    params = {**MEL_PARAMS, "image_size": int(config.image_size)}
    return ViTValenceArousalModel(module.to(dev).eval(), str(location), dev, params)
