"""Training: batches, the loss on trained tokens, the loop, checkpoints."""
