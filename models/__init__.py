"""Pure PyTorch core of fmnist-service: specs, networks, data, training, checkpoints, preprocessing.

Nothing in this package knows about HTTP or the database; the service hooks in through callbacks.
"""
