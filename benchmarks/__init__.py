"""scnn benchmarks."""
