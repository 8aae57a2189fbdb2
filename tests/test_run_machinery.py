"""What the recipes rely on: atomic checkpoints and weights that reach the workers."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict.nn import TensorDictModule

from torchrl_mcmc.recipes import (
    CONFIG_DIR,
    HMCSAC,
    LDTD3,
    SAC,
    TD3,
    BestOfNSAC,
    compose_config,
    train,
)
from torchrl_mcmc.recipes import run as run_module
from torchrl_mcmc.recipes.checkpoint import (
    CHECKPOINT_POINTER,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from torchrl_mcmc.recipes.evaluation import evaluate, make_eval_env
from torchrl_mcmc.recipes.factories import (
    make_collector,
    make_env,
    make_replay_buffer,
    set_seeds,
)


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


def test_an_unreadable_newest_checkpoint_falls_back_to_the_newest_intact_one(
    tmp_path: Path, caplog
) -> None:
    for frames in (100, 200, 300):
        save_checkpoint(
            tmp_path, {"frames": frames, "w": torch.full((100,), float(frames))}, keep=3
        )
    ckpt_dir = tmp_path / "checkpoints"
    newest, middle = ckpt_dir / "frames_000000000300.pt", ckpt_dir / "frames_000000000200.pt"
    newest.write_bytes(newest.read_bytes()[:200])  # truncated
    middle.write_bytes(b"")  # emptied
    with caplog.at_level("WARNING", logger="torchrl_mcmc.recipes"):
        state = load_checkpoint(tmp_path)
    assert state["frames"] == 100 and (state["w"] == 100).all()
    warnings = [r.getMessage() for r in caplog.records]
    assert any(str(newest) in w and "failed finding central directory" in w for w in warnings)
    assert any(str(middle) in w and "EOFError" in w for w in warnings)
    # The damaged files are set aside (out of the rotation) and the pointer names the one loaded.
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "frames_000000000100.pt",
        "frames_000000000200.pt.unreadable",
        "frames_000000000300.pt.unreadable",
    ]
    assert (tmp_path / CHECKPOINT_POINTER).read_text() == "frames_000000000100.pt"
    assert load_checkpoint(tmp_path)["frames"] == 100


def test_no_readable_checkpoint_is_an_error_naming_every_file(tmp_path: Path) -> None:
    for frames in (100, 200):
        save_checkpoint(tmp_path, {"frames": frames}, keep=2)
    for path in (tmp_path / "checkpoints").iterdir():
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    assert f"no checkpoint of {tmp_path} can be read" in message
    assert "frames_000000000200.pt (RuntimeError" in message
    assert "frames_000000000100.pt (RuntimeError" in message


def test_collector_workers_act_with_the_current_critic() -> None:
    overrides = ["preset=smoke", "env=Pendulum-v1", "collector.num_workers=2"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
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


# ---------------------------------------------------------------------------- method checkpoints
#: Each method's ``state_dict()``: its top-level keys, and the names of the optimisers in
#: ``"optimizers"`` (one layout for every method: optimiser states by name).
_PID_KEYS = ["loss", "optimizers", "pid", "policy_iteration"]
#: Case: (recipe, method, checkpoint keys, optimisers, overrides).
CHECKPOINT_LAYOUTS = {
    # The default (entropy prior): alpha is trained, the PID entry is None.
    "hmc_sac": ("hmc_sac", HMCSAC, _PID_KEYS, ["policy", "flow", "critic", "alpha"], []),
    # The paper's, with a policy iteration of 2 updates: saved half-way through the second.
    "hmc_sac_paper_every_2": (
        "hmc_sac",
        HMCSAC,
        _PID_KEYS,
        ["policy", "flow", "critic"],
        ["variant=paper", "pid.iteration_updates=2"],
    ),
    "sac": ("sac", SAC, ["loss", "optimizers"], ["actor", "critic", "alpha"], []),
    "bon_sac": ("bon_sac", BestOfNSAC, ["loss", "optimizers"], ["actor", "critic", "alpha"], []),
    "td3": ("td3", TD3, ["loss", "optimizers", "steps"], ["actor", "critic"], []),
    "ld_td3": ("ld_td3", LDTD3, [*_PID_KEYS, "steps"], ["critic", "policy", "flow"], []),
    # The paper's LD-TD3: the PID's memory in the checkpoint too (the default keeps beta fixed).
    "ld_td3_pid": (
        "ld_td3",
        LDTD3,
        [*_PID_KEYS, "steps"],
        ["critic", "policy", "flow"],
        ["pid.enabled=true"],
    ),
}


def _assert_identical(a: Any, b: Any, where: str = "state") -> None:
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", list(CHECKPOINT_LAYOUTS))
def test_method_checkpoint_keeps_its_layout_and_resumes_exactly(name: str, tmp_path: Path) -> None:
    recipe, build, keys, optimizers, overrides = CHECKPOINT_LAYOUTS[name]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(recipe, overrides=["preset=smoke", "env=Pendulum-v1", *overrides])
    env = make_env(cfg)
    env.set_seed(0)
    set_seeds(0)
    method = build(cfg, env, torch.device("cpu"))
    buffer = make_replay_buffer(cfg, torch.device("cpu"))
    with torch.no_grad():
        data = env.rollout(200, method.policy, break_when_any_done=False)
    buffer.extend(data.reshape(-1).select(*method.replay_keys, strict=False))

    def iteration(method) -> list[dict[str, float]]:
        method.begin_iteration()
        metrics = [method.update(buffer.sample()) for _ in range(3)]
        return [*metrics, method.end_iteration(metrics)]

    iteration(method)  # optimiser moments, PID memory and the update counter are all non-trivial
    save_checkpoint(tmp_path, {"frames": 200, "method": method.state_dict()})
    state = load_checkpoint(tmp_path)["method"]  # through torch.load(weights_only=True)
    assert list(state) == keys
    assert list(state["optimizers"]) == optimizers
    if "steps" in keys:
        assert state["steps"] == 3
    if "pid.iteration_updates=2" in overrides:  # one PID step after 2 updates, then one more
        assert state["policy_iteration"]["updates"] == 1
        assert len(state["policy_iteration"]["distances"]) == 1

    set_seeds(1)  # different initial weights: everything must come from the checkpoint
    resumed = build(cfg, env, torch.device("cpu"))
    resumed.load_state_dict(state)
    _assert_identical(resumed.state_dict(), method.state_dict())
    # ... and training goes on exactly as it would have without the interruption.
    continued = []
    for m in (method, resumed):
        torch.manual_seed(7)
        continued.append(iteration(m))
    assert continued[0] == continued[1]
    env.close()


def test_a_policy_iteration_of_n_updates_refreshes_the_prior_and_steps_the_pid() -> None:
    """``pid.iteration_updates = n``: after every n-th update (not per collected batch) the PID
    steps on the mean distance of those n updates, and the prior becomes the current policy."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = ["preset=smoke", "env=Pendulum-v1", "td3.policy_delay=1"]
        cfg = compose(
            "ld_td3", overrides=[*overrides, "pid.enabled=true", "pid.iteration_updates=2"]
        )
    env = make_env(cfg)
    set_seeds(0)
    method = LDTD3(cfg, env, torch.device("cpu"))
    buffer = make_replay_buffer(cfg, torch.device("cpu"))
    with torch.no_grad():
        data = env.rollout(100, method.policy, break_when_any_done=False)
    buffer.extend(data.reshape(-1).select(*method.replay_keys, strict=False))
    actor, pid = method.actor, method.pid

    def prior_is_policy() -> bool:
        pairs = zip(actor.prior.parameters(), actor.policy.parameters(), strict=True)
        return all(torch.equal(a, b) for a, b in pairs)

    method.begin_iteration()  # no refresh at the batch boundary with an interval
    first = method.update(buffer.sample())
    assert "pid_distance" not in first and not prior_is_policy()
    expected = copy.deepcopy(pid)
    second = method.update(buffer.sample())
    beta = expected.update((first["policy_distance"] + second["policy_distance"]) / 2)
    assert second["pid_distance"] == (first["policy_distance"] + second["policy_distance"]) / 2
    assert second["beta"] == beta and method.loss.beta.item() == pytest.approx(beta)
    assert prior_is_policy()
    third = method.update(buffer.sample())
    assert "pid_distance" not in third and not prior_is_policy()
    assert method.end_iteration([first, second, third]) == {"beta": method.loss.beta.item()}
    env.close()


def test_ld_td3_without_a_flow_trains_the_policy_alone() -> None:
    """``flow.num_layers=0`` is TD3's actor with the trust region: no flow optimiser, and the
    actor update moves the policy."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        overrides = ["preset=smoke", "env=Pendulum-v1", "td3.policy_delay=1"]
        cfg = compose("ld_td3", overrides=[*overrides, "flow.num_layers=0"])
    env = make_env(cfg)
    set_seeds(0)
    method = LDTD3(cfg, env, torch.device("cpu"))
    assert list(method.optimizers) == ["critic", "policy"]
    buffer = make_replay_buffer(cfg, torch.device("cpu"))
    with torch.no_grad():
        data = env.rollout(50, method.policy, break_when_any_done=False)
    buffer.extend(data.reshape(-1).select(*method.replay_keys, strict=False))
    before = [p.detach().clone() for p in method.actor.policy.parameters()]
    metrics = method.update(buffer.sample())
    after = list(method.actor.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert metrics["critic_gain"] == 0.0 and "loss_flow" not in metrics
    env.close()


def test_batched_evaluation_counts_each_episode_once_as_one_by_one_rollouts_do() -> None:
    # Hopper's episodes end when it falls, at different steps for different initial states:
    # the batched evaluation must give each episode its own return, as rolling out the same
    # seeds one env at a time does.
    cfg = compose_config("sac", ["env=Hopper-v4", "eval.episodes=3"])
    torch.manual_seed(0)
    net = torch.nn.Linear(11, 3)
    policy = TensorDictModule(
        lambda obs: 0.2 * torch.tanh(net(obs)), in_keys=["observation"], out_keys=["action"]
    )
    batched = make_eval_env(cfg)
    batched.set_seed(123)
    value = evaluate(policy, batched, max_steps=1000)
    batched.close()

    returns, lengths, seed = [], [], 123
    for _ in range(cfg.eval.episodes):
        env = make_env(cfg)
        seed = env.set_seed(seed)  # SerialEnv seeds its envs in this chain
        with torch.no_grad():
            rollout = env.rollout(1000, policy, break_when_any_done=True)
        returns.append(rollout["next", "reward"].sum().item())
        lengths.append(rollout.shape[0])
        env.close()
    assert len(set(lengths)) > 1, f"the episodes must end at different steps: {lengths}"
    assert value == pytest.approx(sum(returns) / len(returns), rel=1e-5)


def test_a_signal_during_the_setup_stops_the_run_at_its_start_and_the_run_resumes(
    tmp_path: Path, monkeypatch
) -> None:
    # The setup (method, buffer, collector, evaluation env) takes tens of seconds on a busy
    # machine, after the run directory exists: a scheduler's SIGTERM then must not kill the run.
    def make_collector_then_signal(*args, **kwargs):
        collector = make_collector(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return collector

    overrides = ["preset=smoke", "env=Pendulum-v1", f"run_root={tmp_path}"]
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(run_module, "make_collector", make_collector_then_signal)
    assert train(compose_config("sac", overrides), SAC).exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's handler is gone
    (run_dir,) = sorted(p.parent for p in tmp_path.rglob("config.yaml"))
    assert not (run_dir / "summary.json").exists()
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    state = torch.load(checkpoint, weights_only=True)
    assert state["frames"] == 0 and state["progress"]["updates"] == 0  # stopped before a batch

    # Stopped again during a resume's setup: the checkpoint it resumed from stays the only one.
    resume = [*overrides, f"resume={run_dir}"]
    assert train(compose_config("sac", resume), SAC).exit_code == 128 + signal.SIGTERM
    assert list((run_dir / "checkpoints").iterdir()) == [checkpoint]

    monkeypatch.setattr(run_module, "make_collector", make_collector)
    assert train(compose_config("sac", resume), SAC).exit_code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == compose_config("sac", overrides).collector.total_frames
