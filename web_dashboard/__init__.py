"""The live dashboard: static HTML/CSS/JS in ``static/``, served by ``emotion-monitor serve``."""
