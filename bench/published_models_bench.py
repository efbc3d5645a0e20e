"""Latency of the published-model adapters at their real sizes, torch vs ONNX Runtime.

No hub is reachable, so each checkpoint is built with the published architecture's default sizes
(wav2vec2-base / HuBERT-base classifier, AST with 1024 frames x 128 mel bins, ViT-base at 224 px,
the pooled classifier over a wav2vec2-base encoder, or XLSR-53-large with ``--large``) and random
weights: timings and torch-vs-ORT differences are meaningful, predictions are not.

    python bench/published_models_bench.py [--only vit-va,hf-w2v] [--large] [--repeats 5]

Prints one line per adapter and runtime: load time, wall and process-CPU ms per 2 s window at
batch 1 and at batch 8, and the largest probability / valence-arousal difference between torch
and ORT on real speech.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLIP = (
    Path(__file__).resolve().parents[1].parent
    / "shared/datasets/ravdess_speech_16k/Actor_19/03-01-05-01-01-01-19.flac"
)
LABELS = ["ang", "hap", "neu", "sad"]


def build_hf(out: Path, arch: str) -> Path:
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTForAudioClassification,
        HubertConfig,
        HubertForSequenceClassification,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    ids = dict(id2label=dict(enumerate(LABELS)), label2id={v: i for i, v in enumerate(LABELS)})
    if arch == "ast":
        ASTForAudioClassification(ASTConfig(num_labels=4, **ids)).save_pretrained(out)
        ASTFeatureExtractor().save_pretrained(out)
        return out
    if arch == "hubert":
        HubertForSequenceClassification(HubertConfig(num_labels=4, **ids)).save_pretrained(out)
    else:
        model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(num_labels=4, **ids))
        model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(out)
    return out


def build_vit(out: Path) -> Path:
    import torch
    from emotion_monitor.models.adapters.vit_va import build_module
    from transformers import ViTConfig

    out.mkdir(parents=True)
    cfg = ViTConfig()
    cfg.save_pretrained(out)
    torch.save(build_module(cfg).state_dict(), out / "vit_va.pth")
    return out


def build_pooled(out: Path, large: bool) -> Path:
    from emotion_monitor.models.adapters.pooled import build_classifier
    from safetensors.torch import save_file
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    out.mkdir(parents=True)
    size = (
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        )
        if large
        else {}
    )
    w2v = Wav2Vec2Model(Wav2Vec2Config(**size))
    w2v.save_pretrained(out / "w2v")
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(out / "w2v")
    n_states = w2v.config.num_hidden_layers + 1
    dim = w2v.config.hidden_size * n_states
    cfg = {
        "wav2vec2": "w2v",
        "layers": list(range(n_states)),
        "combine": "concat",
        "scaler": "scaler.json",
        "patch_size": 256,
        "d_model": 256,
        "num_heads": 4,
        "num_layers": 4,
        "dim_feedforward": 512,
        "labels": ["negative", "neutral", "positive"],
    }
    save_file(build_classifier(cfg, dim).state_dict(), out / "model.safetensors")
    (out / "scaler.json").write_text(json.dumps({"mean": [0.0] * dim, "scale": [1.0] * dim}))
    (out / "pooled_config.json").write_text(json.dumps(cfg))
    return out


def timed(model, windows: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of model.predict(windows) after a warm-up call.

    CPU time is reported too because on a shared machine wall time mostly measures the neighbours.
    """
    model.predict(windows)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model.predict(windows)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def max_diff(a, b) -> float:
    d = 0.0
    for p, q in zip(a, b, strict=True):
        if p.classes:
            d = max(d, max(abs(p.classes[k] - q.classes[k]) for k in p.classes))
        else:
            d = max(d, abs(p.valence - q.valence), abs(p.arousal - q.arousal))
    return d


def main() -> None:
    import soundfile as sf
    import torch
    from emotion_monitor.models import load_model
    from emotion_monitor.models.adapters.export import export_adapter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="hf-w2v,hf-hubert,hf-ast,vit-va,pooled")
    ap.add_argument("--large", action="store_true", help="pooled over an XLSR-53-size encoder")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x, _ = sf.read(str(CLIP), dtype="float32")
    one = [x[:32000]]
    eight = [x[i * 800 : i * 800 + 32000] for i in range(8)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2 s windows")
    print(
        f"{'adapter':10} {'runtime':12} {'load s':>7} {'ms/win b1':>10} {'cpu ms b1':>10} "
        f"{'ms/win b8':>10} {'cpu ms b8':>10} {'max |torch-ort|':>16}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        builders = {
            "hf-w2v": lambda d: build_hf(d, "wav2vec2"),
            "hf-hubert": lambda d: build_hf(d, "hubert"),
            "hf-ast": lambda d: build_hf(d, "ast"),
            "vit-va": build_vit,
            "pooled": lambda d: build_pooled(d, args.large),
        }
        for name in args.only.split(","):
            src = builders[name](tmp / name)
            t = time.perf_counter()
            torch_model = load_model(str(src), device="cpu")
            load_t = time.perf_counter() - t
            t = time.perf_counter()
            exported = export_adapter(str(src), tmp / f"{name}-onnx")
            export_t = time.perf_counter() - t
            t = time.perf_counter()
            ort_model = load_model(str(exported), device="cpu")
            load_o = time.perf_counter() - t
            diff = max_diff(torch_model.predict(eight), ort_model.predict(eight))
            for runtime, model, lt in (
                ("torch", torch_model, load_t),
                ("onnxruntime", ort_model, load_o),
            ):
                w1, c1 = (1000 * v for v in timed(model, one, args.repeats))
                w8, c8 = (1000 / 8 * v for v in timed(model, eight, max(1, args.repeats // 2)))
                extra = f"{diff:16.2e}" if runtime == "onnxruntime" else f"{'':16}"
                print(
                    f"{name:10} {runtime:12} {lt:7.1f} {w1:10.1f} {c1:10.1f} {w8:10.1f} "
                    f"{c8:10.1f} {extra}",
                    flush=True,
                )
            print(f"{name:10} export {export_t:.1f} s", flush=True)
            del torch_model, ort_model


if __name__ == "__main__":
    main()
