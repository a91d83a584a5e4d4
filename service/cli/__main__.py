"""``python -m service.cli``: the ``fmnist`` command where the console script is not installed."""

import os

from service.cli import app

# Guarded: the trainers' fork server imports the main module again (as __mp_main__), and must not run the command.
if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
