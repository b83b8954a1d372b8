"""scnn trainer: the self-compressing ResNet-9 (PyTorch, no Ray)."""
