"""Audio sources: files, raw PCM on stdin, the microphone and the demo, each an iterable of
16 kHz mono float32 chunks (or ``SourceError`` notices); :mod:`.runner` picks one and drives it."""
