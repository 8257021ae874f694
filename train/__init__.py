"""Model, weight formats, training checkpoints and the DeepSpeed training engine."""
