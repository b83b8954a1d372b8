"""scnn sweep: gamma swept on Ray Tune."""
