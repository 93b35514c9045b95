"""Training loops: the world-model trainer (later: the online loop)."""
