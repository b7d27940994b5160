"""Training: state, the jitted step, optimizers, data, logging and the loop."""
