"""Training one run: model sizes and the model, the optimizer and its schedule, checkpoints with
optimizer state, the training loop, and launching it under accelerate (one process, GPUs, nodes)."""
