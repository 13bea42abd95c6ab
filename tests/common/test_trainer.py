"""EndSpawnedProcessGroup: a stage run in spawned processes (ddp_spawn) ends with its process group destroyed; other
strategies keep theirs (the processes of `ddp` go on from fitting to testing)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch.distributed as dist
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

from apps.common.trainer import EndSpawnedProcessGroup


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("launcher, destroyed", [(_MultiProcessingLauncher, True), (_SubprocessScriptLauncher, False)])
def test_the_process_group_ends_with_a_spawned_stage_only(process_group, launcher, destroyed):
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=object.__new__(launcher)))
    EndSpawnedProcessGroup().teardown(trainer, None, "fit")
    assert dist.is_initialized() is not destroyed


def test_without_a_process_group_it_does_nothing():
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=object.__new__(_MultiProcessingLauncher)))
    EndSpawnedProcessGroup().teardown(trainer, None, "test")
    assert not dist.is_initialized()
