"""Acting with a compiled policy by default (``collector.compile_policy``), eagerly where
``torch.compile`` fails, with one warning."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir

from torchrl_mcmc.recipes import CONFIG_DIR, SAC, factories

CPU = torch.device("cpu")


def _smoke_cfg(compile_policy: bool):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        compiled = f"collector.compile_policy={compile_policy}"
        return compose("sac", overrides=["preset=smoke", "env=Pendulum-v1", compiled])


def test_acting_is_compiled_by_default_and_not_in_the_smoke_preset() -> None:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        assert compose("hmc_sac").collector.compile_policy is True
        assert compose("hmc_sac", overrides=["preset=smoke"]).collector.compile_policy is False


def test_a_compile_failure_collects_eagerly_with_one_warning(monkeypatch, caplog) -> None:
    cfg = _smoke_cfg(True)
    env = factories.make_env(cfg)
    policy = SAC(cfg, env, CPU).policy

    def fails(module, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler\nlong trace")

        return call

    monkeypatch.setattr(torch, "compile", fails)
    with caplog.at_level(logging.INFO, logger="torchrl_mcmc.recipes"):
        collector = factories.make_collector(cfg, policy, CPU, seed=0)
    assert collector.compiled_policy is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "collecting eagerly" in warnings[0].getMessage()
    assert "no C++ compiler" in warnings[0].getMessage()
    assert "long trace" not in warnings[0].getMessage()  # one line
    collector.shutdown()


def test_a_working_compile_reaches_the_collector_and_leaves_the_rng_alone(monkeypatch) -> None:
    cfg = _smoke_cfg(True)
    env = factories.make_env(cfg)
    policy = SAC(cfg, env, CPU).policy
    probed = []

    def identity(module, **kwargs):  # stands in for torch.compile: no compile time in tests
        def call(td):
            probed.append(td.batch_size)
            return module(td)

        return call

    monkeypatch.setattr(torch, "compile", identity)
    state = torch.get_rng_state()
    assert factories.acting_compiles(policy, cfg, CPU)
    assert torch.equal(torch.get_rng_state(), state)  # the probe's draws are not the run's
    assert probed  # the policy really ran on a reset
    collector = factories.make_collector(cfg, policy, CPU, seed=0)
    assert collector.compiled_policy is True
    collector.shutdown()
    eager = factories.make_collector(_smoke_cfg(False), copy.deepcopy(policy), CPU, seed=0)
    assert eager.compiled_policy is False
    eager.shutdown()


def test_the_actors_compile_into_one_graph_after_the_input_check() -> None:
    """One graph break in a compiled action, the input check's raise (a graph cannot raise on a
    tensor's value), before the whole action's one graph: none in the chain (the divergence
    warning's data-dependent test split it in two, which doubled a compiled HMC action's
    cost)."""
    from conftest import make_policy, make_td3_policy
    from tensordict import TensorDict
    from torch import nn
    from torchrl.data import Bounded
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.modules import MLP, ValueOperator

    from torchrl_mcmc import BestOfNActor, HMCActor, LangevinFlowActor

    def relu_critic() -> ValueOperator:  # the scripts' critics: the closed-form gradient path
        net = MLP(in_features=5, out_features=1, num_cells=[8, 8], activation_class=nn.ReLU)
        return ValueOperator(net, in_keys=["observation", "action"])

    spec = Bounded(-1.0, 1.0, shape=(2,))
    actors = [
        HMCActor(make_policy(3, 2), relu_critic(), num_steps=2),
        LangevinFlowActor(
            make_td3_policy(3, 2), relu_critic(), state_dim=3, action_spec=spec, num_layers=2
        ),
        BestOfNActor(make_policy(3, 2), relu_critic(), num_samples=3),
    ]
    for actor in actors:
        torch._dynamo.reset()
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            explained = torch._dynamo.explain(actor)(TensorDict({"observation": torch.randn(3)}))
        assert explained.graph_break_count == 1, explained.break_reasons
        (reason,) = explained.break_reasons
        assert reason.user_stack[-1].name == "check_finite_inputs", reason
        # The check's few ops, then the whole action.
        check, action = (len(graph.graph.nodes) for graph in explained.graphs)
        assert check < 10 < action, (check, action)
        # And a compiled action raises on a non-finite observation, as an eager one.
        compiled = torch.compile(actor, backend="eager")  # dynamo's graphs, no code generation
        with torch.no_grad(), pytest.raises(ValueError, match=r"'observation' \(1 of 1 rows\)"):
            compiled(TensorDict({"observation": torch.tensor([0.0, float("nan"), 1.0])}))
