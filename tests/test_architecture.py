"""The README's architecture holds: which packages each program loads (a fresh interpreter per program)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def packages_loaded_by(module: str) -> set[str]:
    script = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted({'.'.join(name.split('.')[:2]) for name in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    ("program", "must_not_load"),
    [
        ("service.worker.worker", {"service.api", "service.serving", "service.cli", "service.client"}),
        ("service.api.app", {"service.worker", "service.cli", "service.client"}),
        ("service.client", {"service.api", "service.store", "service.worker", "service.serving", "service.registry"}),
        ("service.jobs.queue", {"service.api", "service.serving", "service.worker"}),
        ("service.registry", {"service.api", "service.serving", "service.worker"}),
    ],
)
def test_a_program_loads_only_the_layers_below_it(program: str, must_not_load: set[str]) -> None:
    loaded = packages_loaded_by(program)
    assert program.rsplit(".", 1)[0] in loaded or program in loaded  # the probe saw the program itself
    assert sorted(loaded & must_not_load) == []


def test_models_imports_nothing_of_the_service() -> None:
    loaded = packages_loaded_by("models.training, models.checkpoints, models.preprocessing, models.export")
    assert sorted(name for name in loaded if name.startswith("service")) == []


def test_the_command_line_loads_torch_only_in_the_commands_that_use_it() -> None:
    # `fmnist serve` sets OMP_NUM_THREADS before torch loads (idle OpenMP threads spinning beside the event loop
    # cost a third of the prediction throughput, measured): the command group itself must not load torch.
    loaded = packages_loaded_by("service.cli")
    assert "torch" not in loaded and "models.data" not in loaded
