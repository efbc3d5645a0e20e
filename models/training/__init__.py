"""The ``train``, ``evaluate`` and ``export`` commands and what only they need (manifests,
augmentations, derived valence/arousal targets, the feature cache, head fitting, plots).

Serving code never imports this package; it may import the streamer (to read audio files and
to replay clips through the engine)."""
