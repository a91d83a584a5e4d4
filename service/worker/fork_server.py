"""What the fork server of the trainer processes (service/worker/trainer.py) imports before it forks them.

Importing this module imports torch and the trainer's code, and turns on deterministic kernels, which itself
imports a few hundred modules (2 to 4 s on two CPU cores). Done here once, in the fork server, a trainer
process forked from it starts at once; the worker, which never trains, pays for none of it. Nothing here
touches a GPU: a CUDA context in the fork server would be unusable in every process forked from it.
"""

from __future__ import annotations

from service.worker.trainer import configure_determinism

configure_determinism()
