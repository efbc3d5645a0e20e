"""Adapters for published model formats (Hugging Face audio classifiers, the ViT valence/arousal
regressor, the pooled-embedding transformer classifier) and their ONNX export and serving."""
