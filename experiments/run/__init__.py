"""One run: its config schema, run directory, training, W&B logging, warm runner and GPU share."""
