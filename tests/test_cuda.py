"""Training on CUDA: the actors collecting on the device, one update of each loss on the device
equal to the same update on the CPU, and each script's smoke run and resume with ``device=cuda``.

Every test skips without CUDA. ``TORCHRL_MCMC_TEST_DEVICE=cpu`` runs them on the CPU instead
(the CPU-to-CPU comparisons then hold trivially): a check of the tests' own logic on a machine
without a GPU. ``benchmarks/device_check.sh`` runs them on the GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_critic, make_policy, make_td3_policy, make_transitions
from tensordict import TensorDict, TensorDictBase
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torchrl.collectors import Collector
from torchrl.data import Bounded
from torchrl.envs import DoubleToFloat, GymEnv, TransformedEnv
from torchrl.objectives import LossModule

from torchrl_mcmc import (
    BestOfNActor,
    BestOfNSACLoss,
    HMCActor,
    HMCLoss,
    LangevinFlowActor,
    LangevinFlowLoss,
)

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device(os.environ.get("TORCHRL_MCMC_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(),
    reason="needs CUDA (TORCHRL_MCMC_TEST_DEVICE=cpu runs these tests on the CPU)",
)
CPU = torch.device("cpu")
OBS, ACT = 4, 2  # the loss tests' toy task
SPEC = Bounded(-1.0, 1.0, shape=(ACT,))


def _on_device(tensors, what: str) -> None:
    """Every tensor of ``tensors`` (a tensordict, a module's parameters...) is on DEVICE."""
    if isinstance(tensors, TensorDictBase):
        tensors = tensors.values(True, True)
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    assert tensors, f"{what}: nothing to check"
    elsewhere = {str(t.device) for t in tensors if t.device.type != DEVICE.type}
    assert not elsewhere, f"{what}: on {elsewhere}, not {DEVICE}"


# ------------------------------------------------------------------ collecting on the device
def _pendulum() -> TransformedEnv:
    env = TransformedEnv(GymEnv("Pendulum-v1"), DoubleToFloat())
    env.set_seed(0)
    return env


def _hmc(env) -> tuple[HMCActor, HMCLoss]:
    policy = make_policy(3, 1, low=-2.0, high=2.0)
    actor = HMCActor(policy, make_critic(3, 1), action_spec=env.action_spec, num_steps=3)
    actor = actor.to(DEVICE)
    return actor, HMCLoss(actor).to(DEVICE)


def _langevin(env) -> tuple[LangevinFlowActor, LangevinFlowLoss]:
    policy = make_td3_policy(3, 1, low=-2.0, high=2.0)
    actor = LangevinFlowActor(
        policy, make_critic(3, 1), state_dim=3, action_spec=env.action_spec, num_layers=3
    ).to(DEVICE)
    return actor, LangevinFlowLoss(actor).to(DEVICE)


def _best_of_n(env) -> tuple[BestOfNActor, BestOfNSACLoss]:
    policy = make_policy(3, 1, low=-2.0, high=2.0)
    actor = BestOfNActor(policy, make_critic(3, 1), num_samples=4).to(DEVICE)
    return actor, BestOfNSACLoss(actor, action_spec=env.action_spec).to(DEVICE)


@pytest.mark.parametrize(
    ("build", "chain_key"), [(_hmc, "hmc"), (_langevin, "flow"), (_best_of_n, None)]
)
def test_the_actor_collects_on_the_device_with_the_bound_critics(build, chain_key) -> None:
    env = _pendulum()
    actor, loss = build(env)
    # The loss binds its trained critics to the actor (the very tensors, now on the device).
    assert actor.critic_params is loss.qvalue_network_params
    _on_device(actor.critic_params, "bound critic parameters")
    if chain_key is not None:
        actor.refresh_prior()
        _on_device(actor.prior.parameters(), "prior snapshot")
        _on_device(actor.flow.parameters(), "chain parameters")
    collector = Collector(
        env,
        actor,
        frames_per_batch=100,
        total_frames=200,
        device=DEVICE,
        auto_register_policy_transforms=False,
    )
    frames = 0
    try:
        for batch in collector:
            frames += batch.numel()
            _on_device(batch, "collected batch")
            low, high = env.action_spec.space.low, env.action_spec.space.high
            action = batch["action"].cpu()
            assert ((action >= low) & (action <= high)).all()
            if chain_key is not None:
                u0, uK = batch[chain_key, "u0"], batch[chain_key, "uK"]
                assert uK.isfinite().all() and (uK - u0).abs().max() > 1e-4  # the chain ran
    finally:
        collector.shutdown()
    assert frames == 200
    # Collection left the hand-over as it was: the actor still reads the loss's critics.
    assert actor.critic_params is loss.qvalue_network_params
    _on_device(actor.critic_params, "bound critic parameters after collection")


# ------------------------------------------------------------------ one update, device vs CPU
class CPUDraws(TorchDispatchMode):
    """Makes every random draw on the CPU's generator and moves it to where it was asked for,
    so that one seed gives the same numbers on the CPU and on CUDA (whose generator differs).

    It catches every ATen operator tagged ``nondeterministic_seeded`` (randn_like, normal,
    normal_...), whatever calls it: the package, TorchRL or torch.distributions. ``draws``
    counts them, so that a test can check that it saw the randomness it compares.
    """

    def __init__(self) -> None:
        super().__init__()
        self.draws = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded not in func.tags:
            return func(*args, **kwargs)
        if "out" in kwargs:
            raise NotImplementedError(f"CPUDraws: {func} with out= is not handled")
        self.draws += 1
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        target = kwargs.get("device") or (tensors[0].device if tensors else CPU)

        def to_cpu(value):
            if isinstance(value, torch.Tensor):
                return value.cpu()
            return CPU if isinstance(value, torch.device) else value

        drawn = func(*tree_map(to_cpu, args), **tree_map(to_cpu, kwargs))
        if func._schema.name.endswith("_"):  # in place (normal_, uniform_...): into the caller's
            return args[0].copy_(drawn)
        return tree_map(lambda t: t.to(target) if isinstance(t, torch.Tensor) else t, drawn)


def _hmc_loss(update_mode: str) -> LossModule:
    actor = HMCActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_steps=3)
    return HMCLoss(actor, update_mode=update_mode)


def _langevin_loss() -> LossModule:
    actor = LangevinFlowActor(
        make_td3_policy(OBS, ACT), make_critic(OBS, ACT), state_dim=OBS, num_layers=3
    )
    return LangevinFlowLoss(actor)


def _best_of_n_loss() -> LossModule:
    actor = BestOfNActor(make_policy(OBS, ACT), make_critic(OBS, ACT), num_samples=4)
    return BestOfNSACLoss(actor, action_spec=SPEC)


def _one_update(make: Callable[[], LossModule], device: torch.device) -> dict[str, torch.Tensor]:
    """Builds the loss from seed 0 (on the CPU, then moved), takes one SGD step of the sum of
    its ``loss_*`` terms on a seeded batch, every draw from the CPU's generator at seed 1; the
    loss terms, the gradients and the stepped parameters, on the CPU."""
    torch.manual_seed(0)
    loss = make()
    loss.make_value_estimator(gamma=0.99)
    loss = loss.to(device)
    batch = make_transitions(OBS, ACT, batch=64).to(device)
    optim = torch.optim.SGD(loss.parameters(), lr=0.1)
    torch.manual_seed(1)
    with CPUDraws() as draws:
        out = loss(batch)
        terms = {k: v for k, v in out.items() if k.startswith("loss_")}
        sum(terms.values()).backward()
        optim.step()
    assert draws.draws > 0  # the update drew: what the comparison is about
    result = {f"out.{k}": v.detach().cpu() for k, v in terms.items()}
    for name, param in loss.named_parameters():
        if param.grad is not None:
            result[f"grad.{name}"] = param.grad.cpu()
        result[f"param.{name}"] = param.detach().cpu()
    return result


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _hmc_loss("alternating"), id="hmc-alternating"),
        pytest.param(lambda: _hmc_loss("joint"), id="hmc-joint"),
        pytest.param(_langevin_loss, id="langevin"),
        pytest.param(_best_of_n_loss, id="best-of-n"),
    ],
)
def test_one_update_on_the_device_equals_the_same_update_on_the_cpu(make, monkeypatch) -> None:
    if DEVICE.type == "cuda":  # full float32 products, as on the CPU (torch's default)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    on_cpu, on_device = _one_update(make, CPU), _one_update(make, DEVICE)
    assert on_cpu.keys() == on_device.keys()
    assert any(k.startswith("grad.") for k in on_cpu)
    for key, expected in on_cpu.items():
        # float32 on both, sums in another order: about 1e-6 apart (bounded here by 1e-4).
        torch.testing.assert_close(on_device[key], expected, rtol=1e-4, atol=1e-5, msg=key)


def test_cpu_draws_give_the_cpus_numbers_wherever_asked() -> None:
    x = torch.zeros(3, 2, device=DEVICE)
    torch.manual_seed(5)
    expected = torch.randn(3, 2), torch.normal(torch.zeros(3), torch.ones(3)), torch.randn(4)
    torch.manual_seed(5)
    with CPUDraws() as draws:
        drawn = torch.randn_like(x), torch.normal(x[:, 0], x[:, 0] + 1), x.new_empty(4).normal_()
    assert draws.draws == 3
    for got, want in zip(drawn, expected, strict=True):
        assert got.device.type == DEVICE.type
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


# ------------------------------------------------------------------ the scripts on the device
SCRIPTS = ["sac", "td3", "hmc_sac", "bon_sac", "ld_td3"]


def _script(name: str, run_root: Path, *overrides: str) -> None:
    """Runs ``examples/<name>.py`` as a user does (a subprocess) under ``run_root``."""
    cmd = [sys.executable, str(ROOT / "examples" / f"{name}.py"), *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*cmd, f"run_root={run_root}"], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def _tensors(state) -> list[torch.Tensor]:
    """The tensors of a (nested) checkpoint state."""
    if isinstance(state, torch.Tensor):
        return [state]
    values = state.values() if isinstance(state, dict) else state
    if not isinstance(state, dict | list | tuple):
        return []
    return [t for value in values for t in _tensors(value)]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_script_trains_on_the_device_and_resumes_there(name: str, tmp_path: Path) -> None:
    _script(name, tmp_path, "preset=smoke", f"device={DEVICE}")
    (run_dir,) = [p.parent for p in tmp_path.rglob("config.yaml")]
    summary = _summary(run_dir)
    assert summary["frames"] == 400 and summary["device"].split(":")[0] == DEVICE.type
    assert summary["versions"]["torch"] == torch.__version__
    checkpoint = run_dir / "checkpoints" / (run_dir / "latest_checkpoint.txt").read_text().strip()
    # The networks were trained on the device: their saved tensors come back there.
    _on_device(_tensors(torch.load(checkpoint, weights_only=True)["method"]["loss"]), "loss state")

    # Resumed with the run directory alone (its config.yaml says device), to a larger budget.
    _script(name, tmp_path, f"resume={run_dir}", "collector.total_frames=600")
    assert [p.parent for p in tmp_path.rglob("config.yaml")] == [run_dir]
    summary = _summary(run_dir)
    assert summary["frames"] == 600 and summary["device"].split(":")[0] == DEVICE.type
    assert "resumed at 400 frames" in (run_dir / "train.log").read_text()


def test_the_device_check_names_a_tensor_elsewhere() -> None:
    """The checks above can fail: a tensor off the device among device ones is named."""
    mixed = TensorDict({"a": torch.zeros(1, device=DEVICE), "b": torch.zeros(1, device="meta")})
    with pytest.raises(AssertionError, match="meta"):
        _on_device(mixed, "mixed")
    nested = {"a": [torch.ones(1), {"b": torch.zeros(2)}], "c": 3}
    assert [t.numel() for t in _tensors(nested)] == [1, 2]
