"""Training: the flat epoch loop and evaluation, gradient telemetry and clipping, mixed
precision, optimizer construction."""
