"""Tests of the PID controller of beta and its TorchRL trainer hook.

Paper §4.1, docs/method.md §1.3.
"""

from __future__ import annotations

import doctest
import math
import random
import warnings
from typing import ClassVar

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.trainers import DefaultOptimizationStepper, Trainer, TrainerHookBase

import torchrl_mcmc.control.hooks as hooks_module
import torchrl_mcmc.control.pid as pid_module
from torchrl_mcmc.control import PIDBetaHook, PIDController

# Gains and bounds chosen so every intermediate value is a binary fraction: the hand-computed
# expectations below are exact, not approximate.
CONFIG = dict(target=4.0, kp=0.5, ki=0.25, kd=0.25, beta_init=1.0, beta_min=0.25, beta_max=4.0)

# Each step of this script exercises one part of the rule (integral starts at beta_init/ki = 4):
DISTANCES = [
    4.0,  # 1: on target, no derivative yet -> beta stays at beta_init = 1
    12.0,  # 2: 0.5*8 + 0.25*12 + 0.25*8 = 9 -> clamp at beta_max = 4
    6.0,  # 3: 0.5*2 + 0.25*14 + 0.25*(-6) = 3, no clamp
    0.0,  # 4: 0.5*(-4) + 0.25*10 + 0.25*(-6) = -1 -> max(0, .) = 0 -> clamp at beta_min
    0.0,  # 5: -2 + 0.25*6 = -0.5 -> beta_min
    0.0,  # 6: -2 + 0.25*2 = -1.5 -> beta_min
    0.0,  # 7: I = max(0, 2 - 4) = 0: the integral floors at 0
    5.0,  # 8: 0.5*1 + 0.25*1 + 0.25*5 = 2 (without the floor at step 7, I = -1 and beta = 1.5)
    6.0,  # 9: 0.5*2 + 0.25*3 + 0.25*1 = 2
]
EXPECTED_BETAS = [1.0, 4.0, 3.0, 0.25, 0.25, 0.25, 0.25, 2.0, 2.0]
EXPECTED_INTEGRALS = [4.0, 12.0, 14.0, 10.0, 6.0, 2.0, 0.0, 1.0, 3.0]


def reference_pid(distances, *, target, kp, ki, kd, beta_init, beta_min, beta_max):
    """An independent transcription of paper §4.1 + docs/method.md §1.3.

    Returns (betas, integrals).
    """
    integral = beta_init / ki if ki > 0 else 0.0
    previous = None
    betas, integrals = [], []
    for distance in distances:
        error = distance - target
        derivative = 0.0 if previous is None else distance - previous
        integral = max(0.0, integral + error)
        beta = max(0.0, kp * error + ki * integral + kd * derivative)
        betas.append(min(max(beta, beta_min), beta_max))
        integrals.append(integral)
        previous = distance
    return betas, integrals


def controller_state(pid: PIDController) -> tuple:
    return pid.beta, pid.integral, pid.prev_distance, pid.num_updates


# --------------------------------------------------------------------------------- (a) the rule
def test_scripted_sequence_matches_hand_computed_and_reference():
    pid = PIDController(**CONFIG)
    assert pid.beta == 1.0 and pid.integral == 4.0 and pid.num_updates == 0
    assert pid.prev_distance is None

    betas, integrals = [], []
    for distance in DISTANCES:
        returned = pid.update(distance)
        assert returned == pid.beta
        betas.append(returned)
        integrals.append(pid.integral)

    assert betas == EXPECTED_BETAS
    assert integrals == EXPECTED_INTEGRALS
    assert (betas, integrals) == reference_pid(DISTANCES, **CONFIG)
    assert pid.num_updates == len(DISTANCES) and pid.prev_distance == DISTANCES[-1]


@pytest.mark.parametrize("ki", [0.0, 0.013, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_sequences_match_reference_exactly(ki, seed):
    rng = random.Random(seed)
    config = dict(target=3.7, kp=0.21, ki=ki, kd=0.09, beta_init=0.8, beta_min=0.05, beta_max=2.5)
    distances = [rng.uniform(0.7, 6.7) for _ in range(50)]  # centred on the target
    pid = PIDController(**config)
    betas = [pid.update(d) for d in distances]
    expected_betas, expected_integrals = reference_pid(distances, **config)
    assert betas == expected_betas  # same float operations in the same order: exact
    assert pid.integral == expected_integrals[-1]
    # Mostly interior values, where every term of the rule shows (the clamps are scripted above).
    assert sum(config["beta_min"] < b < config["beta_max"] for b in betas) > 10


def test_first_update_on_target_keeps_beta_init_and_zero_ki_starts_integral_at_zero():
    pid = PIDController(target=2.0, kp=0.3, ki=0.1, kd=0.7, beta_init=0.7, beta_min=0.01)
    # ki * (beta_init / ki) may differ from beta_init by rounding only.
    assert pid.update(2.0) == pytest.approx(0.7, rel=1e-12)
    pid = PIDController(target=2.0, kp=0.3, ki=0.0, kd=0.0, beta_init=0.7, beta_min=0.01)
    assert pid.integral == 0.0
    assert pid.update(3.0) == pytest.approx(0.3)  # proportional term only


def test_tensor_distances_are_accepted_and_detached():
    pid = PIDController(**CONFIG)
    distance = torch.tensor([[5.0]], requires_grad=True)  # one element, any shape, with grad
    assert pid.update(distance) == 0.5 * 1.0 + 0.25 * 5.0  # exactly what the float 5.0 gives
    assert isinstance(pid.prev_distance, float) and pid.prev_distance == 5.0
    assert pid.update(torch.tensor(5.0, dtype=torch.float64)) == 0.5 * 1.0 + 0.25 * 6.0


def test_default_gains_scale_with_target_and_beta_init():
    pid = PIDController(target=8.0, beta_init=2.0)
    assert pid.kp == pytest.approx(0.2 * 2.0 / 8.0)
    assert pid.ki == pytest.approx(0.05 * 2.0 / 8.0)
    assert pid.kd == 0.0
    assert (pid.beta_min, pid.beta_max) == (pytest.approx(0.02), pytest.approx(200.0))
    assert pid.update(8.0) == pytest.approx(2.0)
    # A distance far above target raises beta, far below lowers it.
    assert PIDController(target=8.0).update(16.0) > 1.0
    assert PIDController(target=8.0).update(1.0) < 1.0


def test_reset_restores_initial_state():
    pid = PIDController(**CONFIG)
    for distance in DISTANCES[:3]:
        pid.update(distance)
    pid.reset()
    assert controller_state(pid) == (1.0, 4.0, None, 0)
    assert [pid.update(d) for d in DISTANCES] == EXPECTED_BETAS


# ------------------------------------------------------------------------- (b) checkpointing
def test_state_dict_round_trip_mid_sequence():
    full = PIDController(**CONFIG)
    full_betas = [full.update(d) for d in DISTANCES]

    first = PIDController(**CONFIG)
    for distance in DISTANCES[:4]:
        first.update(distance)
    state = first.state_dict()
    assert state["beta"] == 0.25 and state["num_updates"] == 4
    assert all(isinstance(v, (float, int, type(None), dict)) for v in state.values())

    second = PIDController(**CONFIG)
    second.load_state_dict(state)
    assert controller_state(second) == controller_state(first)
    assert [second.update(d) for d in DISTANCES[4:]] == full_betas[4:]


def test_state_dict_round_trip_through_torch_save_weights_only(tmp_path):
    full_betas = EXPECTED_BETAS
    for split in (0, 4):  # before any update (prev_distance is None) and mid-sequence
        first = PIDController(**CONFIG)
        for distance in DISTANCES[:split]:
            first.update(distance)
        path = tmp_path / f"pid_{split}.pt"
        torch.save(first.state_dict(), path)
        loaded = torch.load(path, weights_only=True)
        second = PIDController(**CONFIG)
        second.load_state_dict(loaded)
        assert controller_state(second) == controller_state(first)
        assert [second.update(d) for d in DISTANCES[split:]] == full_betas[split:]


def test_load_state_dict_rejects_bad_state_and_leaves_state_unchanged():
    pid = PIDController(**CONFIG)
    pid.update(12.0)
    before = controller_state(pid)
    good = pid.state_dict()
    for bad in (
        {k: v for k, v in good.items() if k != "integral"},
        {**good, "beta": float("nan")},
        {**good, "integral": -1.0},
        {**good, "prev_distance": float("inf")},
        {**good, "num_updates": -3},
        {**good, "beta": "1.0"},
    ):
        with pytest.raises(ValueError):
            pid.load_state_dict(bad)
        assert controller_state(pid) == before


def test_load_state_dict_clamps_beta_into_current_bounds():
    wide = PIDController(target=1.0, kp=1.0, ki=0.5, beta_min=0.1, beta_max=100.0)
    wide.update(50.0)
    assert wide.beta > 10.0
    narrow = PIDController(target=1.0, kp=1.0, ki=0.5, beta_min=0.1, beta_max=10.0)
    narrow.load_state_dict(wide.state_dict())
    assert narrow.beta == 10.0 and narrow.integral == wide.integral


# ---------------------------------------------------------------------- (c) validation
NAN, INF = float("nan"), float("inf")
BAD_CONSTRUCTIONS = [
    ({"target": 0.0}, 0.0),
    ({"target": -1.5}, -1.5),
    ({"target": NAN}, NAN),
    ({"target": INF}, INF),
    ({"kp": -0.25}, -0.25),
    ({"ki": NAN}, NAN),
    ({"kd": INF}, INF),
    ({"kd": -3.0}, -3.0),
    ({"beta_init": 0.0, "beta_min": 0.0}, 0.0),
    ({"beta_init": -2.0}, -2.0),
    ({"beta_init": NAN}, NAN),
    ({"beta_min": 0.0}, 0.0),
    ({"beta_min": -0.5}, -0.5),
    ({"beta_min": 1.5}, 1.5),  # above beta_init = 1
    ({"beta_max": 0.75}, 0.75),  # below beta_init = 1
    ({"beta_max": INF}, INF),
    ({"beta_min": NAN}, NAN),
]


@pytest.mark.parametrize(("overrides", "bad"), BAD_CONSTRUCTIONS)
def test_invalid_construction_raises_value_error_naming_the_value(overrides, bad):
    config = {**CONFIG, **overrides}
    with pytest.raises(ValueError) as info:
        PIDController(**config)
    message = str(info.value)
    assert str(bad) in message
    assert any(name in message for name in overrides)


@pytest.mark.parametrize("overrides", [{"target": "1.0"}, {"kp": None}, {"ki": True}])
def test_non_numbers_raise_type_error(overrides):
    config = {**CONFIG, **overrides}
    if overrides == {"kp": None}:  # None means "default": valid
        PIDController(**config)
        return
    with pytest.raises(TypeError):
        PIDController(**config)


# ------------------------------------------------------------------ (d) non-finite distances
@pytest.mark.parametrize(
    "distance",
    [
        NAN,
        INF,
        -INF,
        torch.tensor(NAN),
        torch.tensor([INF]),
        torch.tensor([1.0, 2.0]),
        torch.tensor([]),
    ],
    ids=["nan", "inf", "-inf", "tensor-nan", "tensor-inf", "tensor-2-elements", "tensor-empty"],
)
def test_bad_distance_raises_and_leaves_state_unchanged(distance):
    pid = PIDController(**CONFIG)
    for d in DISTANCES[:3]:
        pid.update(d)
    before = controller_state(pid)
    with pytest.raises(ValueError):
        pid.update(distance)
    assert controller_state(pid) == before
    # And the controller carries on exactly as if the bad value had never been seen.
    assert [pid.update(d) for d in DISTANCES[3:]] == EXPECTED_BETAS[3:]


# ------------------------------------------------------------------------------ (e) the hook
class BufferBetaLoss(nn.Module):
    """A stand-in loss that keeps beta as a buffer, as HMCLoss does."""

    def __init__(self, beta: float = 7.0) -> None:
        super().__init__()
        self.register_buffer("beta", torch.tensor(beta))


class FloatBetaLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.beta = 7.0


def loss_output(distance: float) -> TensorDict:
    return TensorDict({"loss_actor": torch.tensor(0.0), "policy_distance": torch.tensor(distance)})


def test_hook_feeds_mean_distance_per_batch_and_writes_beta_buffer():
    loss = BufferBetaLoss(beta=7.0)
    hook = PIDBetaHook(loss, PIDController(**CONFIG))
    assert isinstance(hook, TrainerHookBase)
    assert loss.beta.item() == 1.0  # aligned with the controller at construction

    # Three policy iterations with three optimisation steps each.
    batches = [[3.0, 4.0, 5.0], [10.0, 12.0, 14.0], [4.0, 5.0, 6.0]]
    means = [sum(b) / len(b) for b in batches]
    expected_betas, expected_integrals = reference_pid(means, **CONFIG)
    for steps, mean, beta, integral in zip(
        batches, means, expected_betas, expected_integrals, strict=True
    ):
        for distance in steps:
            hook.accumulate(loss_output(distance))
        logged = hook.step()
        assert logged == {"pid_beta": beta, "pid_distance": mean, "pid_integral": integral}
        assert loss.beta.item() == beta and hook.beta == beta
        assert hook.num_accumulated == 0
    assert expected_betas == [1.0, 4.0, 2.0]  # on target; clamped high; interior
    assert loss.beta.dtype == torch.float32 and loss.beta.shape == ()


def test_hook_writes_plain_attribute_and_custom_keys():
    loss = FloatBetaLoss()
    loss.kl_weight = 3.0
    hook = PIDBetaHook(
        loss, PIDController(**CONFIG), distance_key=("diag", "dist"), beta_attr="kl_weight"
    )
    assert loss.kl_weight == 1.0 and loss.beta == 7.0
    hook.accumulate(TensorDict({"diag": {"dist": torch.tensor(12.0)}}))
    hook.step()
    assert loss.kl_weight == 4.0 and isinstance(loss.kl_weight, float)


class DeclaredOutputsLoss(BufferBetaLoss):
    """A loss that declares its outputs, as TorchRL's losses do, without a policy distance."""

    out_keys: ClassVar[list[str]] = ["loss_actor", "entropy"]


def test_hook_refuses_a_loss_that_emits_no_policy_distance():
    # Found at construction, not at the first accumulate (a KeyError there).
    with pytest.raises(ValueError, match=r"DeclaredOutputsLoss emits no 'policy_distance' \(its"):
        PIDBetaHook(DeclaredOutputsLoss(), PIDController(**CONFIG))
    hook = PIDBetaHook(DeclaredOutputsLoss(), PIDController(**CONFIG), distance_key="entropy")
    assert hook.distance_key == "entropy"


def test_hook_refuses_an_hmc_loss_whose_beta_is_the_tuned_alpha():
    from conftest import make_critic, make_policy

    from torchrl_mcmc import HMCActor, HMCLoss

    uniform = HMCLoss(HMCActor(make_policy(3, 2), make_critic(3, 2), num_steps=1))
    with pytest.raises(ValueError) as error:
        PIDBetaHook(uniform, PIDController(0.05))
    message = str(error.value)
    assert message.startswith("PIDBetaHook: HMCLoss tunes beta itself")
    assert "prior='uniform'" in message and "emits no 'policy_distance'" in message
    assert "HMCActor.PAPER_KWARGS" in message
    assert uniform.actor.beta.item() == 1.0  # nothing written
    paper = HMCActor(make_policy(3, 2), make_critic(3, 2), num_steps=1, **HMCActor.PAPER_KWARGS)
    PIDBetaHook(HMCLoss(paper, **HMCLoss.PAPER_KWARGS), PIDController(0.05))


def test_hook_errors_and_empty_step():
    with pytest.raises(AttributeError, match="temperature"):
        PIDBetaHook(BufferBetaLoss(), PIDController(**CONFIG), beta_attr="temperature")
    with pytest.raises(TypeError):
        PIDBetaHook(BufferBetaLoss(), controller=0.5)

    loss = BufferBetaLoss()
    hook = PIDBetaHook(loss, PIDController(**CONFIG))
    assert hook.step() is None and hook.controller.num_updates == 0
    with pytest.raises(KeyError, match="policy_distance"):
        hook.accumulate(TensorDict({"loss_actor": torch.tensor(0.0)}))
    hook.accumulate(loss_output(2.0))
    with pytest.raises(ValueError):
        hook.accumulate(loss_output(NAN))
    assert hook.num_accumulated == 1  # the NaN was not recorded
    hook.accumulate(loss_output(10.0))
    assert hook.step()["pid_distance"] == 6.0


def test_hook_state_dict_round_trip_includes_accumulator(tmp_path):
    hook = PIDBetaHook(BufferBetaLoss(), PIDController(**CONFIG))
    for distance in (4.0, 12.0):
        hook.accumulate(loss_output(distance))
        hook.step()
    hook.accumulate(loss_output(6.0))
    torch.save(hook.state_dict(), tmp_path / "hook.pt")

    restored_loss = BufferBetaLoss()
    restored = PIDBetaHook(restored_loss, PIDController(**CONFIG))
    restored.load_state_dict(torch.load(tmp_path / "hook.pt", weights_only=True))
    assert restored.state_dict() == hook.state_dict()
    assert restored_loss.beta.item() == 4.0
    hook.accumulate(loss_output(0.0))
    restored.accumulate(loss_output(0.0))
    assert restored.step() == hook.step()


def test_hook_state_survives_torchrl_unified_checkpoint(tmp_path):
    from torchrl.checkpoint import Checkpoint

    hook = PIDBetaHook(BufferBetaLoss(), PIDController(**CONFIG))
    for distance in DISTANCES[:3]:
        hook.accumulate(loss_output(distance))
        hook.step()
    Checkpoint(pid=hook).save(tmp_path / "ckpt")
    restored = PIDBetaHook(BufferBetaLoss(), PIDController(**CONFIG))
    Checkpoint(pid=restored).load(tmp_path / "ckpt")
    assert restored.state_dict() == hook.state_dict()
    assert type(restored.controller.num_updates) is int


class RecordingTrainer:
    """Records what a hook registers, for a check independent of the real Trainer's loop."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, object]] = []
        self.modules: dict[str, object] = {}

    def register_op(self, dest, op, **kwargs):
        self.ops.append((dest, op))

    def register_module(self, name, module):
        self.modules[name] = module


def test_register_uses_a_real_trainer_stage():
    trainer = RecordingTrainer()
    hook = PIDBetaHook(BufferBetaLoss(), PIDController(**CONFIG))
    hook.register(trainer)
    assert trainer.modules == {"pid_beta": hook}
    assert trainer.ops == [("post_optim_complete_log", hook)]
    # That the stage exists and fires once per optimised batch is checked on a real Trainer below.


class ListCollector:
    """The part of a collector the Trainer's loop touches: iteration, and no-op lifecycle."""

    def __init__(self, batches: list[TensorDictBase], init_random_frames: int = 0) -> None:
        self.batches = batches
        self.init_random_frames = init_random_frames

    def __iter__(self):
        return iter(self.batches)

    def shutdown(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class DistanceLoss(nn.Module):
    """A trainable loss whose policy distance changes every step, recording what it emitted.

    Batch ``i`` (all ``x == i``) has mean distance ``MEAN_DISTANCE[i]`` over 3 steps.
    """

    MEAN_DISTANCE: ClassVar[dict[int, float]] = {1: 5.5, 2: 7.0, 3: 4.0}
    STEP_OFFSET = (-0.5, 0.0, 0.5)

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("beta", torch.tensor(1.0))
        self.calls: list[tuple[float, float]] = []  # (distance, beta used) per step

    def forward(self, batch: TensorDictBase) -> TensorDict:
        batch_index = int(batch["x"][0])
        distance = self.MEAN_DISTANCE[batch_index] + self.STEP_OFFSET[len(self.calls) % 3]
        self.calls.append((distance, self.beta.item()))
        loss = ((self.weight - batch["x"]) ** 2).mean()
        return TensorDict(
            {
                "loss_actor": loss,
                "policy_distance": torch.tensor(distance),
                "beta": self.beta.clone(),
            }
        )


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("path", ["optimizer_hook", "optimization_stepper"])
def test_hook_in_a_real_trainer_updates_beta_once_per_batch(path):
    steps_per_batch, frames_per_batch = 3, 4
    batches = [
        TensorDict({"x": torch.full((frames_per_batch,), float(i))}, batch_size=[frames_per_batch])
        for i in range(4)
    ]
    loss = DistanceLoss()
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    kwargs = {"optimizer": optimizer}
    if path == "optimization_stepper":
        kwargs["optimization_stepper"] = DefaultOptimizationStepper()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            # Batch 0 is collected before init_random_frames is reached: no optimisation, so
            # the controller must not move on it.
            collector=ListCollector(batches, init_random_frames=frames_per_batch + 1),
            total_frames=frames_per_batch * len(batches),
            frame_skip=1,
            optim_steps_per_batch=steps_per_batch,
            loss_module=loss,
            progress_bar=False,
            log_interval=0,
            **kwargs,
        )
    config = dict(target=5.0, kp=0.5, ki=0.25, kd=0.25, beta_init=1.0, beta_min=0.25, beta_max=4)
    hook = PIDBetaHook(loss, PIDController(**config))
    hook.register(trainer)
    trainer.train()

    assert len(loss.calls) == steps_per_batch * 3  # batches 1, 2, 3 optimised
    distances = [d for d, _ in loss.calls]
    means = [
        sum(distances[i : i + steps_per_batch]) / steps_per_batch
        for i in range(0, len(distances), steps_per_batch)
    ]
    assert means == [5.5, 7.0, 4.0]
    expected_betas, _ = reference_pid(means, **config)
    assert expected_betas == [1.375, 3.0, 0.25]  # beta moves every batch, the last one clamps
    assert hook.controller.num_updates == 3
    assert trainer._log_dict["pid_distance"] == pytest.approx(means, rel=1e-6)
    assert trainer._log_dict["pid_beta"] == pytest.approx(expected_betas, rel=1e-5)
    assert loss.beta.item() == pytest.approx(expected_betas[-1], rel=1e-5)
    # Within a batch every step used the beta set after the previous batch.
    used = [b for _, b in loss.calls]
    for k, beta_before in enumerate([1.0, *expected_betas[:2]]):
        batch_used = used[k * steps_per_batch : (k + 1) * steps_per_batch]
        assert batch_used == pytest.approx([beta_before] * steps_per_batch, rel=1e-5)
    # The hook's state is part of the trainer's checkpoint.
    state = trainer.state_dict()
    assert state["pid_beta"] == hook.state_dict()
    assert state["pid_beta"]["controller"]["num_updates"] == 3


# ---------------------------------------------------------------------------- (f) doctests
@pytest.mark.parametrize("module", [pid_module, hooks_module], ids=["pid", "hooks"])
def test_module_doctests_pass(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_exports():
    import torchrl_mcmc.control as control

    assert set(control.__all__) == {"PIDController", "PIDBetaHook"}
    assert math.isfinite(PIDController(target=1.0).beta)
