"""What the example scripts rely on: atomic checkpoints and weights that reach the workers."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from examples.experiment import CHECKPOINT_POINTER, load_checkpoint, save_checkpoint
from examples.hmc_sac import HMCSAC
from examples.utils import make_collector, make_env, make_replay_buffer

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "examples" / "config")


def test_checkpoint_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, {"frames": 100, "w": torch.arange(3.0)})
    real_save = torch.save

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"frames": 200, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    # The pointer still names the complete previous checkpoint, and no partial file remains.
    assert (tmp_path / CHECKPOINT_POINTER).read_text() == "frames_000000000100.pt"
    assert load_checkpoint(tmp_path)["frames"] == 100
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["frames_000000000100.pt"]


def test_checkpoints_rotate_and_load_with_weights_only(tmp_path: Path) -> None:
    for frames in (1, 2, 3):
        save_checkpoint(tmp_path, {"frames": frames}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["frames_000000000002.pt", "frames_000000000003.pt"]
    assert load_checkpoint(tmp_path)["frames"] == 3


def test_collector_workers_act_with_the_current_critic() -> None:
    overrides = ["preset=smoke", "env=Pendulum-v1", "collector.num_workers=2"]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("hmc_sac", overrides=[*overrides, "collector.init_random_frames=0"])
    env = make_env(cfg)
    method = HMCSAC(cfg, env, torch.device("cpu"))
    collector = make_collector(cfg, method.policy, torch.device("cpu"), seed=0)
    buffer = make_replay_buffer(cfg, torch.device("cpu"))
    actor = method.actor

    def replay_chain(batch, actor):
        """The chain recomputed here, from the worker's (u0, rho0), with ``actor``'s weights."""
        td = batch.reshape(-1)
        prior = actor.prior.get_dist(td.select("observation").copy()).base_dist
        potential = actor.potential_fn(td, prior.mean, prior.stddev)
        return actor.flow(td["hmc", "u0"], td["hmc", "rho0"], potential).position

    matches, stale_matches, stale = [], [], None
    try:
        for i, batch in enumerate(collector):
            worker_uK = batch["hmc", "uK"].reshape(-1, 1)
            if i > 0:
                matches.append(torch.allclose(replay_chain(batch, actor), worker_uK, atol=1e-4))
                stale_matches.append(
                    torch.allclose(replay_chain(batch, stale), worker_uK, atol=1e-4)
                )
            if i == 3:
                break
            stale = copy.deepcopy(actor)
            buffer.extend(batch.reshape(-1).select(*method.replay_keys, strict=False))
            method.begin_iteration()
            for _ in range(5):
                method.update(buffer.sample())
            collector.update_policy_weights_()
    finally:
        collector.shutdown()
    # Every batch after an update was collected with the weights of that update.
    assert matches and all(matches), matches
    # ... and the check can tell: the weights from before the update do not reproduce them.
    assert not any(stale_matches), stale_matches
