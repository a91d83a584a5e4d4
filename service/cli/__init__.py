"""The ``fmnist`` command: server commands (serve, worker, up, db, keys) and remote commands over HTTP."""

from service.cli.server import app

__all__ = ["app"]
