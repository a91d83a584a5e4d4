"""Predictions: the model cache and the micro-batcher that runs every waiting request in one forward pass."""
