"""Speech encoders: Whisper (the project's own short-input encoder on pinned CTranslate2 weights)
and wav2vec2-family checkpoints, the pooling of their hidden states into one vector per window,
and the torch / ONNX Runtime backends that serve them."""
