"""Every config value of the scripts is checked, and a resume keeps the run's configuration.

Here the rules themselves and every check of bad input (values, unknown keys and config groups,
tasks the methods cannot train on, sizes that cannot be allocated, run roots that cannot be
written, damaged run configurations and checkpoints that do not fit), on configurations
composed by Hydra as the scripts compose them and through the code that exits (``Preflight``,
``open_run``, the command line's check), in-process; a handful of them end to end through the
scripts at the end. Training runs of the scripts are in ``test_examples.py``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from torchrl_mcmc.recipes import CONFIG_DIR, SAC, compose_config
from torchrl_mcmc.recipes.checkpoint import CHECKPOINT_POINTER, save_checkpoint
from torchrl_mcmc.recipes.cli import command_line_problems
from torchrl_mcmc.recipes.config_rules import (
    CONFIG_RULES,
    REPLAY_KEYS,
    ConfigError,
    Memory,
    config_problems,
    inspect_task,
    leaves,
    memory_problems,
    memory_uses,
    validate_config,
)
from torchrl_mcmc.recipes.exit_codes import ExitCode
from torchrl_mcmc.recipes.factories import make_env, make_replay_buffer
from torchrl_mcmc.recipes.methods import METHODS
from torchrl_mcmc.recipes.resume import RESUME_MAY_CHANGE, requested_keys, resume_config
from torchrl_mcmc.recipes.run_dir import Preflight, open_run
from torchrl_mcmc.recipes.trainer import train

SCRIPTS = ("hmc_sac", "sac", "bon_sac", "td3", "ld_td3")
ENVS = sorted(p.stem for p in (CONFIG_DIR / "env").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))


def _compose(script: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(script, overrides=list(overrides))


def _compose_with_hydra(script: str, *overrides: str) -> tuple[DictConfig, DictConfig]:
    """The configuration and Hydra's own node, as a script's run sees them."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        full = compose(script, overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]), full.hydra


# ---------------------------------------------------------------------------- the table
def test_every_key_of_every_script_has_a_rule_and_every_rule_a_key() -> None:
    keys_by_script = {script: set(leaves(_compose(script))) for script in SCRIPTS}
    for script, keys in keys_by_script.items():
        assert keys - set(CONFIG_RULES) == set(), f"{script}: keys without a rule"
    assert set(CONFIG_RULES) - set().union(*keys_by_script.values()) == set(), "stale rules"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_shipped_configs_presets_and_envs_pass(script: str) -> None:
    for overrides in [[], *([f"preset={p}"] for p in PRESETS), *([f"env={e}"] for e in ENVS)]:
        assert config_problems(_compose(script, *overrides)) == [], overrides


_F32 = (
    "must be a finite number in [1.2e-38, 8.5e+37] (> 0, and float32 holds it and its reciprocal)"
)

_FOLDER = "must be a folder's name: non-empty, without / or \\, not . or .."

#: ``(script, override, the whole message)``: the key, the bad value and what is allowed.
BAD_VALUES = [
    ("bon_sac", "bon.num_samples=0", "bon.num_samples=0: must be an integer >= 1"),
    # The 13 of issue 10 that got no clean error.
    ("hmc_sac", "hmc.num_steps=2.5", "hmc.num_steps=2.5: must be an integer >= 0"),
    ("hmc_sac", "hmc.step_size=0", "hmc.step_size=0: " + _F32),
    ("hmc_sac", "hmc.step_size=-1", "hmc.step_size=-1: " + _F32),
    # Values whose float32 is 0 or whose reciprocal overflows: a chain that never moves, a
    # temperature 1 / beta = inf (issue 30's audit).
    ("hmc_sac", "hmc.step_size=1e-50", "hmc.step_size=1e-50: " + _F32),
    # Interpolations that cannot be resolved: named, as given, with OmegaConf's reason.
    (
        "hmc_sac",
        "hmc.step_size=${oc.env:TORCHRL_MCMC_UNSET}",
        "hmc.step_size='${oc.env:TORCHRL_MCMC_UNSET}': cannot be resolved (KeyError raised while "
        "resolving interpolation: \"Environment variable 'TORCHRL_MCMC_UNSET' not found\")",
    ),
    (
        "sac",
        "seed=${no.such}",
        "seed='${no.such}': cannot be resolved (Interpolation key 'no.such' not found)",
    ),
    ("hmc_sac", "hmc.alpha_init=1e39", "hmc.alpha_init=1e+39: " + _F32),
    ("hmc_sac", "pid.beta_min=1e-40", "pid.beta_min=1e-40: " + _F32),
    ("sac", "sac.alpha_init=1e-45", "sac.alpha_init=1e-45: " + _F32),
    ("hmc_sac", "pid.beta_min=0", "pid.beta_min=0: " + _F32),
    (
        "hmc_sac",
        "pid.beta_init=20",
        "pid.beta_min=0.001, pid.beta_init=20, pid.beta_max=10.0: need pid.beta_min <= "
        "pid.beta_init <= pid.beta_max (beta is clamped to that range)",
    ),
    (
        "hmc_sac",
        "hmc.update_mode=bogus",
        "hmc.update_mode='bogus': must be one of 'alternating', 'joint'",
    ),
    ("hmc_sac", "hmc.gate_hidden=0", "hmc.gate_hidden=0: must be an integer >= 1"),
    (
        "hmc_sac",
        "hmc.target_entropy=bogus",
        "hmc.target_entropy='bogus': must be 'auto' or a finite number",
    ),
    (
        "hmc_sac",
        "logger.backend=bogus",
        "logger.backend='bogus': must be one of 'csv', 'tensorboard', 'wandb'",
    ),
    (
        "hmc_sac",
        "network.activation=bogus",
        "network.activation='bogus': must be one of 'relu', 'tanh', 'elu', 'silu'",
    ),
    ("hmc_sac", "threads=-1", "threads=-1: must be an integer >= 0"),
    ("hmc_sac", "eval.interval_frames=0", "eval.interval_frames=0: must be an integer >= 1"),
    # ... and the others.
    ("hmc_sac", "hmc.num_steps=-1", "hmc.num_steps=-1: must be an integer >= 0"),
    ("hmc_sac", "hmc.gated=maybe", "hmc.gated='maybe': must be true or false"),
    ("hmc_sac", "hmc.gate_state=1", "hmc.gate_state=1: must be true or false"),
    ("hmc_sac", "hmc.lr=0", "hmc.lr=0: must be a finite number > 0"),
    ("hmc_sac", "hmc.h_update_interval=0", "hmc.h_update_interval=0: must be an integer >= 1"),
    ("hmc_sac", "hmc.prior=flat", "hmc.prior='flat': must be one of 'policy', 'uniform'"),
    (
        "hmc_sac",
        "hmc.potential_critic=max",
        "hmc.potential_critic='max': must be one of 'min', 'first', 'mean_std'",
    ),
    ("hmc_sac", "hmc.pessimism=-1", "hmc.pessimism=-1: must be a finite number >= 0, or null"),
    (
        "hmc_sac",
        "hmc.potential_critic=first hmc.pessimism=2",
        "hmc.potential_critic='first', hmc.pessimism=2: pessimism is read only with "
        "potential_critic=mean_std (leave it null otherwise)",
    ),
    (
        "hmc_sac",
        "pid.iteration_updates=0",
        "pid.iteration_updates=0: must be an integer >= 1, or null",
    ),
    (
        "ld_td3",
        "flow.potential_critic=max",
        "flow.potential_critic='max': must be one of 'min', 'first', 'mean_std'",
    ),
    ("ld_td3", "flow.pessimism=nan", "flow.pessimism=nan: must be a finite number >= 0, or null"),
    (
        "ld_td3",
        "flow.pessimism=0.5",
        "flow.potential_critic='min', flow.pessimism=0.5: pessimism is read only with "
        "potential_critic=mean_std (leave it null otherwise)",
    ),
    ("hmc_sac", "hmc.next_action=mode", "hmc.next_action='mode': must be one of 'chain', 'base'"),
    (
        "hmc_sac",
        "hmc.value_entropy=full",
        "hmc.value_entropy='full': must be one of 'none', 'auxiliary', or null",
    ),
    ("hmc_sac", "hmc.alpha_init=0", "hmc.alpha_init=0: " + _F32),
    ("hmc_sac", "pid.enabled=on", "pid.enabled='on': must be true or false"),
    ("hmc_sac", "pid.target=0", "pid.target=0: must be a finite number > 0"),
    ("hmc_sac", "pid.kp=-1", "pid.kp=-1: must be a finite number >= 0, or null"),
    ("hmc_sac", "pid.ki=inf", "pid.ki=inf: must be a finite number >= 0, or null"),
    ("hmc_sac", "pid.kd=-0.5", "pid.kd=-0.5: must be a finite number >= 0"),
    ("hmc_sac", "pid.beta_max=nan", "pid.beta_max=nan: " + _F32),
    ("sac", "seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
    (
        "sac",
        "device=tpu",
        "device='tpu': must be auto, cpu, cuda or cuda:N naming a CUDA device torch sees",
    ),
    ("sac", "run_root=''", "run_root='': must be a non-empty string"),
    ("sac", "resume=''", "resume='': must be a non-empty string, or null"),
    ("sac", "method=''", "method='': " + _FOLDER),
    ("sac", "progress_bar=sometimes", "progress_bar='sometimes': must be true or false"),
    (
        "sac",
        "env.name=NoSuchEnv-v0",
        "env.name='NoSuchEnv-v0': must be a registered Gymnasium id; with a config: "
        "Pendulum-v1, InvertedDoublePendulum-v4, Hopper-v4, HalfCheetah-v4, Walker2d-v4, "
        "Ant-v4, Humanoid-v4 (-v5 ids of these work too, via env.name=...)",
    ),
    ("sac", "env.max_episode_steps=0", "env.max_episode_steps=0: must be an integer >= 1"),
    (
        "sac",
        "collector.total_frames=1e6",
        "collector.total_frames=1000000.0: must be an integer >= 1",
    ),
    (
        "sac",
        "collector.frames_per_batch=-5",
        "collector.frames_per_batch=-5: must be an integer >= 1",
    ),
    (
        "sac",
        "collector.init_random_frames=-1",
        "collector.init_random_frames=-1: must be an integer >= 0",
    ),
    ("sac", "collector.num_workers=0", "collector.num_workers=0: must be an integer >= 1"),
    (
        "sac",
        "collector.num_workers=3",
        "collector.frames_per_batch=1000, collector.num_workers=3: "
        "collector.frames_per_batch must be a multiple of collector.num_workers",
    ),
    ("sac", "replay.size=0", "replay.size=0: must be an integer >= 1"),
    ("sac", "replay.batch_size=0", "replay.batch_size=0: must be an integer >= 1"),
    ("sac", "optim.lr=-3e-4", "optim.lr=-0.0003: must be a finite number > 0"),
    ("sac", "optim.utd_ratio=0", "optim.utd_ratio=0: must be a finite number > 0"),
    ("sac", "optim.gamma=1.5", "optim.gamma=1.5: must be a finite number >= 0 and <= 1"),
    ("sac", "optim.polyak=-0.1", "optim.polyak=-0.1: must be a finite number >= 0 and < 1"),
    ("sac", "optim.polyak=1", "optim.polyak=1: must be a finite number >= 0 and < 1"),
    (
        "sac",
        "optim.loss_function=l3",
        "optim.loss_function='l3': must be one of 'l2', 'smooth_l1', 'l1'",
    ),
    (
        "sac",
        "network.hidden=[0]",
        "network.hidden=[0]: must be a list of layer widths, each an integer >= 1 ([] for none)",
    ),
    (
        "sac",
        "network.policy_hidden=[64,-1]",
        "network.policy_hidden=[64, -1]: must be a list of layer widths, each an integer >= 1 "
        "([] for none), or null",
    ),
    (
        "sac",
        "network.default_scale=0.005",
        "network.default_scale=0.005: must be a finite number > 0.01 and <= 88",
    ),
    (
        "sac",
        "network.default_scale=100",
        "network.default_scale=100: must be a finite number > 0.01 and <= 88",
    ),
    ("sac", "eval.episodes=0", "eval.episodes=0: must be an integer >= 1"),
    ("sac", "eval.video=1", "eval.video=1: must be true or false"),
    ("sac", "checkpoint.keep=0", "checkpoint.keep=0: must be an integer >= 1"),
    (
        "sac",
        "checkpoint.interval_frames=0",
        "checkpoint.interval_frames=0: must be an integer >= 1",
    ),
    (
        "sac",
        "checkpoint.save_replay_buffer=no",
        "checkpoint.save_replay_buffer='no': must be true or false",
    ),
    ("sac", "logger.exp_name=''", "logger.exp_name='': " + _FOLDER),
    # Names that become folders stay one folder: nothing lands outside the run directory.
    ("sac", "logger.exp_name=../../escape", "logger.exp_name='../../escape': " + _FOLDER),
    ("hmc_sac", "method=..", "method='..': " + _FOLDER),
    ("sac", "sac.alpha_init=0", "sac.alpha_init=0: " + _F32),
    ("sac", "sac.fixed_alpha=yes", "sac.fixed_alpha='yes': must be true or false"),
    ("td3", "td3.policy_delay=0", "td3.policy_delay=0: must be an integer >= 1"),
    (
        "td3",
        "td3.exploration_noise=-0.1",
        "td3.exploration_noise=-0.1: must be a finite number >= 0",
    ),
    ("td3", "td3.noise_clip=-1", "td3.noise_clip=-1: must be a finite number >= 0"),
    ("ld_td3", "td3.policy_noise=-0.2", "td3.policy_noise=-0.2: must be a finite number >= 0"),
    ("ld_td3", "flow.num_layers=-1", "flow.num_layers=-1: must be an integer >= 0"),
    ("ld_td3", "flow.num_layers=2.0", "flow.num_layers=2.0: must be an integer >= 0"),
    ("ld_td3", "flow.step_size=0", "flow.step_size=0: " + _F32),
    ("ld_td3", "flow.hidden=0", "flow.hidden=0: must be an integer >= 1"),
    ("ld_td3", "flow.lr=-1", "flow.lr=-1: must be a finite number > 0"),
    (
        "ld_td3",
        "flow.update_mode=bogus",
        "flow.update_mode='bogus': must be one of 'alternating', 'joint'",
    ),
    (
        "ld_td3",
        "pid.beta_max=0.5",
        "pid.beta_min=0.001, pid.beta_init=1.0, pid.beta_max=0.5: need pid.beta_min <= "
        "pid.beta_init <= pid.beta_max (beta is clamped to that range)",
    ),
]


@pytest.mark.parametrize(
    ("script", "override", "message"), BAD_VALUES, ids=[f"{s}:{o}" for s, o, _ in BAD_VALUES]
)
def test_a_bad_value_is_reported_with_its_key_value_and_what_is_allowed(
    script: str, override: str, message: str
) -> None:
    cfg = _compose(script, *override.split(" "))  # a case of two keys: two overrides
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert str(error.value) == message


def test_bad_values_are_all_reported_in_one_pass() -> None:
    cfg = _compose("hmc_sac", "hmc.step_size=0", "threads=-1", "logger.backend=bogus")
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    lines = str(error.value).splitlines()
    assert lines[0] == "3 bad values:"
    assert [line.split("=")[0].strip() for line in lines[1:]] == [
        "threads",
        "logger.backend",
        "hmc.step_size",
    ]


def test_a_missing_key_is_named() -> None:
    cfg = _compose("hmc_sac")
    with open_dict(cfg):
        del cfg.hmc["gate_hidden"]
    assert config_problems(cfg) == ["hmc.gate_hidden is missing: it must be an integer >= 1"]


def test_a_cuda_device_torch_does_not_see_is_refused() -> None:
    index = torch.cuda.device_count()  # one past the last
    cfg = _compose("sac", f"device=cuda:{index}")
    assert config_problems(cfg) == [
        f"device='cuda:{index}': must be auto, cpu, cuda or cuda:N naming a CUDA device torch "
        f"sees (it sees {index})"
    ]


def test_a_logger_backend_whose_package_is_missing_is_refused(monkeypatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a),
    )
    cfg = _compose("sac", "logger.backend=wandb")
    assert config_problems(cfg) == [
        "logger.backend='wandb': needs the wandb package, which is not installed (csv needs none)"
    ]


# ---------------------------------------------------------------------------- resume
def _saved_quick_run() -> DictConfig:
    """A run's ``config.yaml``: an HMC-SAC run started with ``preset=quick``."""
    return OmegaConf.create(OmegaConf.to_yaml(_compose("hmc_sac", "preset=quick")))


def test_resume_keeps_the_runs_config_and_applies_what_may_change() -> None:
    requested = _compose("hmc_sac", "collector.total_frames=30000", "threads=4")
    keys = {"collector.total_frames", "threads", "run_root", "resume"}
    resumed = resume_config(_saved_quick_run(), requested, _compose("hmc_sac"), keys)
    assert resumed.cfg.env.name == "Pendulum-v1"  # the run's, not the script's Hopper-v4
    assert list(resumed.cfg.network.hidden) == [128, 128]  # the preset's
    assert resumed.cfg.collector.total_frames == 30000 and resumed.cfg.threads == 4
    assert resumed.changed == {"collector.total_frames": (15000, 30000), "threads": (0, 4)}
    assert resumed.filled == {}


def test_resume_refuses_a_change_of_what_the_run_is_and_names_the_key() -> None:
    requested = _compose("hmc_sac", "hmc.num_steps=3", "collector.total_frames=30000")
    keys = {"hmc.num_steps", "collector.total_frames"}
    with pytest.raises(ConfigError, match=r"incompatible: hmc\.num_steps was 5, now 3\. ") as err:
        resume_config(_saved_quick_run(), requested, _compose("hmc_sac"), keys)
    assert ", ".join(k + ("*" if k.endswith(".") else "") for k in RESUME_MAY_CHANGE) in str(
        err.value
    )


def test_resume_accepts_the_runs_own_values_repeated() -> None:
    requested = _compose("hmc_sac", "preset=quick", "seed=0")
    resumed = resume_config(
        _saved_quick_run(), requested, _compose("hmc_sac"), set(leaves(requested))
    )
    assert resumed.changed == {} and resumed.filled == {}


def test_resume_fills_keys_the_run_lacks_with_the_scripts_defaults() -> None:
    saved = _saved_quick_run()
    del saved.network["policy_hidden"]
    resumed = resume_config(saved, _compose("hmc_sac"), _compose("hmc_sac"), set())
    assert resumed.filled == {"network.policy_hidden": None}
    assert "policy_hidden" in resumed.cfg.network


def test_resume_of_another_scripts_run_is_refused() -> None:
    with pytest.raises(ConfigError, match="that run was made by another script"):
        resume_config(_saved_quick_run(), _compose("sac"), _compose("sac"), set())


def test_requested_keys_are_what_the_command_line_set() -> None:
    overrides = [
        "preset=quick",
        "collector.total_frames=500",
        "hydra.run.dir=/x",
        "env=Pendulum-v1",
    ]
    cfg, hydra_cfg = _compose_with_hydra("hmc_sac", *overrides)
    keys = requested_keys(cfg, hydra_cfg, _compose("hmc_sac"))
    # The preset's keys (its env too), the plain override, and no Hydra key.
    assert {"collector.total_frames", "network.hidden", "env.name", "eval.episodes"} <= keys
    assert not any(k.startswith("hydra") for k in keys) and "hmc.num_steps" not in keys
    # A config group set to its default option still names its section's keys.
    cfg, hydra_cfg = _compose_with_hydra("hmc_sac", "env=Hopper-v4")
    assert requested_keys(cfg, hydra_cfg, _compose("hmc_sac")) == {
        "env.name",
        "env.max_episode_steps",
    }


def test_the_papers_configuration_is_one_override_away() -> None:
    cfg = _compose("hmc_sac", "variant=paper")
    assert config_problems(cfg) == []
    hmc = cfg.hmc
    assert (hmc.prior, hmc.update_mode, hmc.next_action, hmc.potential_critic) == (
        "policy",
        "alternating",
        "chain",
        "min",
    )
    assert hmc.value_entropy == "none" and hmc.h_update_interval == 1 and cfg.pid.enabled


# ---------------------------------------------------------------------------- bad input
# Every check of bad input below exits with code 2 through the code a script runs: Preflight (a
# script's Hydra callback, before Hydra makes the run directory), open_run (a resume's
# checkpoint) and the command line's check (what Hydra cannot compose). Each names the key,
# its value and what is allowed, and leaves the run root as it was.
ROOT = Path(__file__).resolve().parents[1]
_BIG = 10**12  # a size no machine holds, whatever it multiplies


class _UnboundedActions(gym.Env):
    """A continuous task whose actions have no bounds (no Gymnasium task of its own has)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def __init__(self, **kwargs) -> None:
        super().__init__()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


def _needs_a_missing_package(**kwargs) -> gym.Env:
    raise gym.error.DependencyNotInstalled("Box2D is not installed (this test's stand-in)")


for _env_id, _entry_point in [
    ("TestUnboundedActions-v0", _UnboundedActions),
    ("TestMissingPackage-v0", _needs_a_missing_package),
]:
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=_entry_point)


def _tree(root: Path) -> dict[Path, int]:
    """Every path under ``root`` with its modification time (nothing if it does not exist)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


@pytest.fixture
def run_root(tmp_path: Path) -> Iterator[Path]:
    """A run root with a previous run's file in it, which a refused run must leave as it was."""
    root = tmp_path / "runs"
    (root / "sac").mkdir(parents=True)
    (root / "sac" / "notes.txt").write_text("mine")
    before = _tree(root)
    yield root
    assert _tree(root) == before


@pytest.fixture
def package_logs() -> Iterator[None]:
    """Puts the package logger back as it was after a test that opens a run (which sends its
    logs to the run's train.log)."""
    package = logging.getLogger("torchrl_mcmc")
    handlers, level = list(package.handlers), package.level
    yield
    for handler in set(package.handlers) - set(handlers):
        handler.close()
        package.removeHandler(handler)
    package.setLevel(level)


def _preflight_message(script: str, *overrides: str, caplog: pytest.LogCaptureFixture) -> str:
    """What Preflight logs for a script's command line, which it refuses with exit code 2."""
    caplog.clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        config = compose(script, overrides=list(overrides), return_hydra_config=True)
        with pytest.raises(SystemExit) as exited:
            Preflight().on_run_start(config=config)
    assert exited.value.code == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    return record.getMessage()


_FITS = "; must be small enough to fit in it"
_BOX = (
    "must be a task with continuous actions in a bounded box (a Gymnasium Box with finite low "
    "and high, into which the policies squash their actions), such as Pendulum-v1, "
    "InvertedDoublePendulum-v4, Hopper-v4, HalfCheetah-v4, Walker2d-v4, Ant-v4, Humanoid-v4"
)
_FLAT = "must be a task that observes one flat vector of floats"
_WRITABLE = "; must be a folder this process can create, or write in"

#: ``(script, overrides, what the message says)``: values that pass their rules, refused by what
#: they make of the task, the machine or the file system. ``{tmp}``: the test's own folder.
BAD_INPUT = [
    # Sizes no machine can allocate: the keys named, with the memory the run needs at least.
    (
        "sac",
        (f"replay.size={_BIG}",),
        [
            f"replay.size={_BIG}: the run needs at least 38.2 TiB "
            "(the replay buffer 38.2 TiB), more than the",
            _FITS,
        ],
    ),
    ("hmc_sac", (f"replay.size={_BIG}",), [f"replay.size={_BIG}: the run needs at least", _FITS]),
    ("ld_td3", (f"replay.size={_BIG}",), [f"replay.size={_BIG}: the run needs at least", _FITS]),
    ("hmc_sac", (f"network.hidden=[{_BIG}]",), [f"network.hidden=[{_BIG}]", "the twin critics"]),
    ("td3", (f"network.hidden=[{10**7},{10**7}]",), [f"network.hidden=[{10**7}, {10**7}]: "]),
    (
        "sac",
        (f"network.policy_hidden=[{_BIG}]",),
        [f"network.policy_hidden=[{_BIG}]: the run needs at least 72.8 TiB (the policy 72.8 TiB)"],
    ),
    ("ld_td3", (f"network.policy_hidden=[{_BIG}]",), [f"network.policy_hidden=[{_BIG}]: "]),
    ("bon_sac", (f"replay.batch_size={_BIG}",), [f"replay.batch_size={_BIG}", "a minibatch"]),
    (
        "td3",
        (f"collector.frames_per_batch={_BIG}",),
        [f"collector.frames_per_batch={_BIG}: the run needs at least", "a collected batch"],
    ),
    (
        "sac",
        ("collector.num_workers=1000000", "collector.frames_per_batch=1000000"),
        ["collector.num_workers=1000000: the run needs at least", "the collector's workers"],
    ),
    ("hmc_sac", ("hmc.gate_hidden=1000000000",), ["hmc.gate_hidden=1000000000: ", _FITS]),
    ("hmc_sac", (f"hmc.num_steps={_BIG}",), [f"hmc.num_steps={_BIG}: ", "the HMC chain"]),
    ("ld_td3", ("flow.hidden=1000000000",), ["flow.num_layers=4, flow.hidden=1000000000: "]),
    ("ld_td3", (f"flow.num_layers={_BIG}",), [f"flow.num_layers={_BIG}, flow.hidden=16: "]),
    ("bon_sac", (f"bon.num_samples={_BIG}",), [f"bon.num_samples={_BIG}: ", "best-of-N"]),
    # Tasks the methods cannot train on.
    (
        "sac",
        ("env.name=CartPole-v1",),
        [f"env.name='CartPole-v1': its actions are discrete (OneHot); {_BOX}"],
    ),
    ("td3", ("env.name=MountainCar-v0",), ["env.name='MountainCar-v0': its actions are discrete"]),
    ("hmc_sac", ("env.name=Acrobot-v1",), ["env.name='Acrobot-v1': its actions are discrete"]),
    ("ld_td3", ("env.name=Taxi-v4",), ["env.name='Taxi-v4': its actions are discrete", _FLAT]),
    (
        "bon_sac",
        ("env.name=FrozenLake-v1",),
        [
            f"env.name='FrozenLake-v1': its actions are discrete (OneHot); {_BOX}; its observation "
            f"is OneHot of shape (16,); {_FLAT}"
        ],
    ),
    ("sac", ("env.name=Blackjack-v1",), ["its observation is Stacked of shape (3, -1)", _FLAT]),
    (
        "sac",
        ("env.name=TestUnboundedActions-v0",),
        [
            "env.name='TestUnboundedActions-v0': its actions are unbounded (a Box without finite "
            f"low and high); {_BOX}"
        ],
    ),
    ("ld_td3", ("env.name=TestUnboundedActions-v0",), ["its actions are unbounded"]),
    (
        "td3",
        ("env.name=TestMissingPackage-v0",),
        [
            "env.name='TestMissingPackage-v0': cannot be made here (DependencyNotInstalled: Box2D "
            "is not installed (this test's stand-in))"
        ],
    ),
    # Keys the recipe does not have, added with +: a typo, with the key meant.
    (
        "hmc_sac",
        ("+hmc.num_step=3",),
        ["hmc.num_step=3: no such key (did you mean hmc.num_steps?)"],
    ),
    (
        "td3",
        ("+td3.policy_dely=3",),
        ["td3.policy_dely=3: no such key (did you mean td3.policy_delay?)"],
    ),
    (
        "bon_sac",
        ("+bon.num_sample=4",),
        ["bon.num_sample=4: no such key (did you mean bon.num_samples?)"],
    ),
    ("ld_td3", ("+flow.hiden=8",), ["flow.hiden=8: no such key (did you mean flow.hidden?)"]),
    ("ld_td3", ("+pid.kd2=0",), ["pid.kd2=0: no such key (did you mean pid.kd?)"]),
    (
        "hmc_sac",
        ("+sac.alpha_init=0.5",),
        ["sac.alpha_init=0.5: no such key (did you mean hmc.alpha_init?)"],
    ),
    (
        "sac",
        ("+network.hidden_sizes=[64]",),
        ["network.hidden_sizes=[64]: no such key (did you mean network.hidden?)"],
    ),
    (
        "sac",
        ("+foo=1",),
        [
            "foo=1: no such key (the top-level keys are checkpoint.*, collector.*, device, "
            "env.*, eval.*, guard.*, logger.*, method, network.*, optim.*, progress_bar, "
            "replay.*, resume, run_root, sac.*, seed, threads)"
        ],
    ),
    ("sac", ("+hmc.num_steps=3",), ["hmc.num_steps=3: no such key (there is no section hmc; "]),
    (
        "td3",
        ("+replay.priority.alpha=0.6",),
        ["replay.priority.alpha=0.6: no such key (the keys of replay are batch_size, size)"],
    ),
    # Run roots no run directory can be made in.
    (
        "sac",
        ("run_root=/proc/foo",),
        [
            f"run_root='/proc/foo': no folder can be made in /proc (No such file or directory)"
            f"{_WRITABLE}"
        ],
    ),
    (
        "td3",
        ("run_root={tmp}/notes.txt/runs",),
        ["run_root='{tmp}/notes.txt/runs': {tmp}/notes.txt is not a folder" + _WRITABLE],
    ),
    ("hmc_sac", ("run_root={tmp}/notes.txt",), ["{tmp}/notes.txt is not a folder" + _WRITABLE]),
    (
        "ld_td3",
        ("hydra.run.dir=/proc/foo/run",),
        ["hydra.run.dir='/proc/foo/run': no folder can be made in /proc"],
    ),
]


@pytest.mark.parametrize(
    ("script", "overrides", "messages"),
    BAD_INPUT,
    ids=[f"{s}:{' '.join(o)}" for s, o, _ in BAD_INPUT],
)
def test_bad_input_exits_2_before_anything_is_made(
    script: str,
    overrides: tuple[str, ...],
    messages: list[str],
    run_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tmp = run_root.parent
    (tmp / "notes.txt").write_text("not a folder")
    try:
        overrides = tuple(o.replace("{tmp}", str(tmp)) for o in overrides)
        message = _preflight_message(
            script,
            "preset=smoke",
            "env=Pendulum-v1",
            f"run_root={run_root}",
            *overrides,
            caplog=caplog,
        )
    finally:
        (tmp / "notes.txt").unlink()
    assert message.startswith("configuration error: ")
    for expected in messages:
        assert expected.replace("{tmp}", str(tmp)) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="the superuser writes in a read-only folder")
def test_a_read_only_run_root_is_refused(run_root: Path, caplog) -> None:
    run_root.chmod(0o555)
    try:
        message = _preflight_message(
            "bon_sac", "preset=smoke", "env=Pendulum-v1", f"run_root={run_root}", caplog=caplog
        )
    finally:
        run_root.chmod(0o755)
    assert f"run_root='{run_root}': no folder can be made in {run_root} (Permission denied)" in (
        message
    )


@pytest.mark.parametrize("checkpointed", [True, False], ids=["checkpointed", "no checkpoint"])
def test_a_new_run_in_a_folder_that_holds_a_run_is_refused_and_touches_nothing(
    checkpointed: bool, tmp_path: Path, caplog
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    if checkpointed:
        save_checkpoint(run_dir, {"frames": 100})
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    message = _preflight_message(
        "sac", "preset=smoke", "env=Pendulum-v1", f"hydra.run.dir={run_dir}", caplog=caplog
    )
    what = (
        f"continue it with resume={run_dir}, or start the new one in another folder"
        if checkpointed
        else "(one that stopped before its first checkpoint); remove that folder, or start the "
        "new run in another one"
    )
    assert message == (
        f"configuration error: hydra.run.dir='{run_dir}': {run_dir} holds a run already"
        f"{'; ' if checkpointed else ' '}{what}"
    )
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_resume_with_hydra_run_dir_elsewhere_is_refused(tmp_path: Path, caplog) -> None:
    smoke = ["preset=smoke", "env=Pendulum-v1", "collector.total_frames=200"]
    run_dir = train(_compose("sac", *smoke, f"run_root={tmp_path}"), SAC).path
    elsewhere = tmp_path / "elsewhere"
    message = _preflight_message(
        "sac", f"resume={run_dir}", f"hydra.run.dir={elsewhere}", caplog=caplog
    )
    assert message == (
        f"configuration error: hydra.run.dir='{elsewhere}' beside resume='{run_dir}': a resumed "
        f"run goes on in its own directory ({run_dir}); drop hydra.run.dir, or set it to that "
        "directory"
    )
    assert not elsewhere.exists()
    # The run's own directory named twice (as benchmarks/learning.py does) is a resume.
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        config = compose(
            "sac", [f"resume={run_dir}", f"hydra.run.dir={run_dir}"], return_hydra_config=True
        )
        Preflight().on_run_start(config=config)
    assert config.hydra.run.dir == str(run_dir)


def test_runs_started_in_the_same_second_get_folders_of_their_own(
    tmp_path: Path, monkeypatch, package_logs
) -> None:
    monkeypatch.setattr("torchrl_mcmc.recipes.run_dir.time.strftime", lambda _: "20261207-120000")
    cfg = _compose("sac", "preset=smoke", "env=Pendulum-v1", f"run_root={tmp_path}")
    folders = [open_run(cfg).path for _ in range(3)]
    stem = tmp_path.resolve() / "sac" / "Pendulum-v1" / "seed0-20261207-120000"
    assert folders == [stem, stem.with_name(stem.name + "-2"), stem.with_name(stem.name + "-3")]
    assert all((folder / "config.yaml").is_file() for folder in folders)


@pytest.mark.parametrize(
    ("recipe", "overrides", "error", "message"),
    [
        ("sacc", [], ConfigError, "recipe='sacc': no such recipe; must be one of sac, hmc_sac"),
        (["sac"], [], ConfigError, "recipe=['sac']: no such recipe"),
        ("sac", "env=Pendulum-v1", TypeError, "got 'env=Pendulum-v1'"),
        ("sac", [3], TypeError, "overrides must be a list of strings"),
        ("sac", ["env=Pendulm-v1"], ConfigError, "env='Pendulm-v1': no such option of env"),
        ("sac", ["optim.lrr=3"], ConfigError, "optim.lrr=3: no such key (did you mean optim.lr?)"),
    ],
)
def test_compose_config_names_a_bad_recipe_or_override(
    recipe: object, overrides: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        compose_config(recipe, overrides)
    assert message in str(raised.value)


def test_each_method_names_the_sections_its_recipe_adds_to_the_common_ones() -> None:
    common = set.intersection(*(set(_compose(script)) for script in SCRIPTS))
    for script, method_cls in METHODS.items():
        assert method_cls.sections == set(_compose(script)) - common, script


@pytest.mark.parametrize(
    ("script", "method", "problem"),
    [
        ("sac", "hmc_sac", "it lacks hmc, pid; it has sac, which HMCSAC does not read"),
        ("hmc_sac", "sac", "it lacks sac; it has hmc, pid, which SAC does not read"),
        ("sac", "bon_sac", "it lacks bon"),
        ("bon_sac", "sac", "it has bon, which SAC does not read"),
        ("td3", "ld_td3", "it lacks flow, pid"),
    ],
)
def test_a_method_given_another_recipes_configuration_exits_2_before_anything_is_made(
    script: str, method: str, problem: str, tmp_path: Path, caplog, package_logs
) -> None:
    cfg = _compose(script, "preset=smoke", "env=Pendulum-v1", f"run_root={tmp_path}")
    method_cls = METHODS[method]
    run = train(cfg, method_cls)
    assert run.exit_code == ExitCode.BAD_INPUT and run.path is None
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error == (
        f"configuration error: this configuration is not {method_cls.__name__}'s: {problem}; "
        f"compose_config({method!r}, [...]) makes one"
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="method_cls must be a method class such as SAC or HMCSAC"):
        train(cfg, method)  # the recipe's name, not its class


def test_good_input_passes_preflight_and_makes_nothing(tmp_path: Path, caplog) -> None:
    # Nothing but the run directory Hydra then makes (Preflight only tries that it can).
    for script in SCRIPTS:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            overrides = [
                "preset=smoke",
                "env.name=MountainCarContinuous-v0",
                f"run_root={tmp_path}",
            ]
            config = compose(script, overrides=overrides, return_hydra_config=True)
            Preflight().on_run_start(config=config)
    assert list(tmp_path.iterdir()) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- memory
def test_every_method_stores_the_replay_keys_the_estimate_counts() -> None:
    cfg = _compose("sac", "preset=smoke", "env=Pendulum-v1")
    env = make_env(cfg)
    for script, method_cls in METHODS.items():
        method = method_cls(_compose(script, "preset=smoke", "env=Pendulum-v1"), env, "cpu")
        assert set(method.replay_keys) == set(REPLAY_KEYS), script
    env.close()


def test_the_replay_estimate_is_what_the_buffer_allocates() -> None:
    cfg = _compose("hmc_sac", "preset=smoke", "env=Hopper-v4", "replay.size=64")
    task = inspect_task(cfg)
    assert (task.observation_dim, task.action_dim) == (11, 3)
    env = make_env(cfg)
    batch = env.rollout(5).reshape(-1).select(*REPLAY_KEYS)
    env.close()
    buffer = make_replay_buffer(cfg, torch.device("cpu"))
    buffer.extend(batch)
    stored = buffer.storage._storage  # the preallocated rows, as TorchRL lays them out
    allocated = sum(t.numel() * t.element_size() for t in stored.values(True, True))
    (estimate,) = [u.nbytes for u in memory_uses(cfg, task) if u.what == "the replay buffer"]
    assert estimate == allocated == 64 * task.transition_bytes


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_network_estimate_is_a_lower_bound_close_to_what_a_method_holds(script: str) -> None:
    cfg = _compose(script, "preset=smoke", "env=Hopper-v4")
    task, env = inspect_task(cfg), make_env(cfg)
    method = METHODS[script](cfg, env, torch.device("cpu"))
    env.close()
    tensors = {t.data_ptr(): t for t in (*method.loss.parameters(), *method.loss.buffers())}
    trained = {
        p.data_ptr(): p
        for o in method.optimizers.values()
        for g in o.param_groups
        for p in g["params"]
    }
    # Every tensor once, and a gradient and Adam's two moments for each trained one.
    held = sum(t.numel() * t.element_size() for t in tensors.values())
    held += 3 * sum(p.numel() * p.element_size() for p in trained.values())
    sized_by_networks = (
        "network.hidden",
        "network.policy_hidden",
        "hmc.gate_hidden",
        "flow.hidden",
    )
    estimate = sum(
        u.nbytes
        for u in memory_uses(cfg, task)
        if set(u.keys) <= set(sized_by_networks) | {"flow.num_layers"}
        and u.what not in ("the HMC chain",)
    )
    assert held / 3 < estimate <= held


def test_sizes_that_fit_the_machine_but_not_its_free_memory_warn(caplog) -> None:
    cfg = _compose("sac", "preset=smoke", "env=Pendulum-v1", "replay.size=20000000")
    task = inspect_task(cfg)  # 20e6 transitions of 42 bytes: 801 MiB
    gib = 2**30
    small = Memory("a machine of 512 MiB", gib // 2, gib // 2)
    assert memory_problems(cfg, task, ram=small) == [
        "replay.size=20000000: the run needs at least 801.2 MiB (the replay buffer 801.1 MiB), "
        f"more than the 512.0 MiB of a machine of 512 MiB{_FITS}"
    ]
    busy = Memory("a busy machine", 4 * gib, gib // 2)
    assert memory_problems(cfg, task, ram=busy) == []
    assert "more than the 512.0 MiB free now" in caplog.text


def test_a_gpu_holds_the_networks_and_replay_the_machine_the_workers() -> None:
    cfg = _compose("sac", "preset=smoke", "env=Pendulum-v1", "replay.size=20000000")
    task, gib = inspect_task(cfg), 2**30
    gpu, ram = Memory("the free memory of cuda:0", gib // 2, gib // 2), Memory("RAM", gib, gib)
    (problem,) = memory_problems(cfg, task, device=gpu, ram=ram)
    assert problem.startswith("replay.size=20000000: ")
    assert problem.endswith(f"more than the 512.0 MiB of the free memory of cuda:0{_FITS}")
    many = _compose("sac", "preset=smoke", "env=Pendulum-v1", "collector.num_workers=20")
    (problem,) = memory_problems(many, task, device=Memory("gpu", 64 * gib, 64 * gib), ram=ram)
    assert problem.startswith("collector.num_workers=20: the run needs at least 2.0 GiB")


# ---------------------------------------------------------------------------- command line
#: ``(script, command line, the message)``: what Hydra cannot compose (it exits 1 with its own
#: message before any callback), refused with exit code 2 and the nearest valid name.
_ENV_OPTIONS = (
    "Ant-v4, HalfCheetah-v4, Hopper-v4, Humanoid-v4, InvertedDoublePendulum-v4, Pendulum-v1, "
    "Walker2d-v4"
)
COMMAND_LINE_ERRORS = [
    (
        "hmc_sac",
        ["hmc.nonexistent=1"],
        "hmc.nonexistent=1: no such key (the keys of hmc are alpha_init, gate_hidden, "
        "gate_state, gated, h_update_interval, lr, next_action, num_steps, pessimism, "
        "potential_critic, prior, step_size, target_entropy, update_mode, value_entropy)",
    ),
    ("ld_td3", ["flow.hiden=3"], "flow.hiden=3: no such key (did you mean flow.hidden?)"),
    (
        "td3",
        ["td3.policy_dely=3"],
        "td3.policy_dely=3: no such key (did you mean td3.policy_delay?)",
    ),
    ("bon_sac", ["replay.sise=10"], "replay.sise=10: no such key (did you mean replay.size?)"),
    ("hmc_sac", ["envv=Pendulum-v1"], "envv='Pendulum-v1': no such key (did you mean env?)"),
    (
        "sac",
        ["hydra.run.dirr=/x"],
        "hydra.run.dirr='/x': no such key (did you mean hydra.run.dir?)",
    ),
    (
        "sac",
        ["env=NoSuchEnv-v0"],
        f"env='NoSuchEnv-v0': no such option of env (its options: {_ENV_OPTIONS})",
    ),
    (
        "td3",
        ["env=Hoper-v4"],
        "env='Hoper-v4': no such option of env (did you mean Hopper-v4? "
        f"its options: {_ENV_OPTIONS})",
    ),
    ("sac", ["preset=nope"], "preset='nope': no such option of preset (its options: quick, smoke)"),
    (
        "bon_sac",
        ["preset=quik"],
        "preset='quik': no such option of preset (did you mean quick? its options: quick, smoke)",
    ),
    (
        "hmc_sac",
        ["variant=papr"],
        "variant='papr': no such option of variant (did you mean paper? its options: paper)",
    ),
    (
        "sac",
        ["variant=paper"],
        "variant=paper: sac's configuration has no variant group (its groups: env, preset)",
    ),
    (
        "ld_td3",
        ["hydra/launcher=joblibb"],
        "hydra/launcher='joblibb': no such option of "
        "hydra/launcher (did you mean joblib? its options: basic, joblib, submitit_local, "
        "submitit_slurm)",
    ),
    (
        "sac",
        ["-m", "env=Pendulum-v1,Hoper-v4"],
        "env='Hoper-v4': no such option of env (did you "
        f"mean Hopper-v4? its options: {_ENV_OPTIONS})",
    ),
    (
        "sac",
        ["seed=0,1"],
        "Ambiguous value for argument 'seed=0,1' 1. To use it as a list, use "
        "key=[value1,value2] 2. To use it as string, quote the value: key='value1,value2' 3. To "
        "sweep over it, add --multirun to your command line",
    ),
    (
        "td3",
        ["network.hidden=[64,"],
        "no viable alternative at input '[64,' See "
        "https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details",
    ),
    (
        "sac",
        ["+replay.size=10"],
        "Could not append to config. An item is already at "
        "'replay.size'. Either remove + prefix: 'replay.size=10' Or add a second + to add or "
        "override 'replay.size': '++replay.size=10'",
    ),
    # Hydra ignores a launcher outside a multirun: the run would train here, unasked.
    (
        "hmc_sac",
        ["hydra/launcher=submitit_slurm", "env=Ant-v4"],
        "hydra/launcher=submitit_slurm: Hydra uses a launcher only for a multirun; add -m to "
        "launch through it, or leave it out to train in this process",
    ),
    # A multirun's values are checked, every one, before its first job trains.
    (
        "sac",
        ["-m", "preset=smoke", "seed=0,1.5"],
        "seed=1.5: must be an integer in [0, 4294967295]",
    ),
]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    COMMAND_LINE_ERRORS,
    ids=[f"{s}:{' '.join(a)}" for s, a, _ in COMMAND_LINE_ERRORS],
)
def test_a_command_line_hydra_cannot_compose_names_the_nearest_valid_name(
    script: str, args: list[str], message: str
) -> None:
    assert command_line_problems(script, args) == [message]


def test_command_lines_that_compose_pass() -> None:
    for script, args in [
        ("sac", ["preset=smoke", "env=Pendulum-v1", "seed=3"]),
        ("hmc_sac", ["variant=paper", "+foo=1"]),  # an added key is the run's own check
        ("td3", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1"]),
        ("ld_td3", ["--cfg", "job", "env=Hopper-v4", "~eval.video"]),
        ("bon_sac", ["--help", "nonsense=1"]),  # Hydra's help, left to Hydra
    ]:
        assert command_line_problems(script, args) == [], args


# ---------------------------------------------------------------------------- resume
def _run_dir_with(tmp_path: Path, config: str | bytes | None) -> Path:
    """A run directory with a checkpoint pointer and ``config`` as its config.yaml (``None``:
    a folder there instead)."""
    run_dir = tmp_path / "old" / "sac" / "Pendulum-v1" / "seed0-old"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / CHECKPOINT_POINTER).write_text("frames_000000000200.pt")
    path = run_dir / "config.yaml"
    if config is None:
        path.mkdir()
    elif isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config)
    return run_dir


def _saved(script: str, *overrides: str) -> str:
    cfg = _compose(script, "preset=smoke", "env=Pendulum-v1", *overrides)
    return OmegaConf.to_yaml(cfg, resolve=True)


#: ``(script, the run's config.yaml, what the message says after its path)``.
DAMAGED_CONFIGS = [
    ("sac", ":::\n  - : [", "is not YAML: while parsing a block mapping"),
    ("bon_sac", "", "is empty: it is no run's configuration."),
    ("td3", "- sac\n- Pendulum-v1\n", "holds a list, not a run's configuration (a mapping)."),
    ("ld_td3", "just words", "holds a string, not a run's configuration (a mapping)."),
    ("hmc_sac", b"\x00\x9f\x92\x96 binary", "cannot be read (UnicodeDecodeError: "),
    ("sac", None, "cannot be read (IsADirectoryError: "),
    (
        "td3",
        "seed: 0\nreplay: {size: 10}\n",
        "has no method: it is not a configuration these recipes saved.",
    ),
    (
        "sac",
        "method: sac\nseed: ${nope}\n",
        "is no run's configuration: Interpolation key 'nope' not found",
    ),
    ("hmc_sac", _saved("td3"), "that run was made by another script: its config (method td3)"),
    (
        "sac",
        _saved("sac").replace("size: 1000", "size: -1"),
        "replay.size=-1: must be an integer >= 1",
    ),
    (
        "td3",
        _saved("td3").replace("Pendulum-v1", "CartPole-v1"),
        "env.name='CartPole-v1': its actions are discrete",
    ),
    (
        "ld_td3",
        _saved("ld_td3").replace("size: 1000", f"size: {_BIG}"),
        f"replay.size={_BIG}: the run needs at least",
    ),
]


@pytest.mark.parametrize(
    ("script", "config", "message"),
    DAMAGED_CONFIGS,
    ids=[f"{s}:{m[:30]}" for s, _, m in DAMAGED_CONFIGS],
)
def test_a_damaged_or_foreign_run_config_is_refused_naming_the_file(
    script: str, config: str | bytes | None, message: str, tmp_path: Path, caplog
) -> None:
    run_dir = _run_dir_with(tmp_path, config)
    before = _tree(tmp_path)
    logged = _preflight_message(
        script, f"resume={run_dir}", f"run_root={tmp_path / 'new'}", caplog=caplog
    )
    assert logged.startswith(f"configuration error: resume='{run_dir}': {run_dir}/config.yaml")
    assert message in logged
    assert _tree(tmp_path) == before


def _saved_run(
    tmp_path: Path, script: str, made_with: list[str], config_says: list[str]
) -> tuple[Path, DictConfig]:
    """A run directory whose checkpoint was made with the overrides ``made_with`` and whose
    config.yaml says ``config_says``, and the configuration that resumes it."""
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    base = ["preset=smoke", "env=Pendulum-v1", "network.hidden=[16,16]"]
    made = _compose(script, *base, *made_with)
    env = make_env(made)
    method = METHODS[script](made, env, torch.device("cpu"))
    env.close()
    save_checkpoint(run_dir, {"frames": 200, "method": method.state_dict()})
    cfg = _compose(script, *base, *config_says, f"resume={run_dir}")
    OmegaConf.save(OmegaConf.merge(cfg, {"resume": None}), run_dir / "config.yaml", resolve=True)
    (run_dir / "train.log").write_text("")
    return run_dir, cfg


#: ``(script, the checkpoint made with, the run's config.yaml says, what the message names)``.
MISMATCHED_CHECKPOINTS = [
    (
        "sac",
        ["env.name=MountainCarContinuous-v0"],
        [],
        "loss.actor_network_params.module.0.module.0.0.weight is (16, 2) in it, (16, 3) built",
    ),
    (
        "td3",
        [],
        ["network.hidden=[32,32]"],
        "loss.actor_network_params.module.0.module.0.weight is (16, 3) in it, (32, 3) built",
    ),
    ("bon_sac", [], ["network.policy_hidden=[8]"], "loss.actor_network_params.module.0.module.0"),
    (
        "hmc_sac",
        [],
        ["hmc.gate_hidden=8"],
        "loss.actor.flow.gate.shift_net.0.weight is (16, 2) in it, (8, 2) built",
    ),
    ("hmc_sac", ["hmc.gated=false"], [], "loss.actor.flow.gate."),
    (
        "hmc_sac",
        ["variant=paper", "pid.enabled=false"],
        ["variant=paper"],
        "its 'pid' is empty, the method's is not",
    ),
    ("ld_td3", [], ["flow.num_layers=2"], "is in it, not in the networks built"),
    ("ld_td3", [], ["flow.hidden=8"], "loss.actor.flow.layers.0.net.0.weight is (16, "),
]


@pytest.mark.parametrize(
    ("script", "made_with", "config_says", "message"),
    MISMATCHED_CHECKPOINTS,
    ids=[f"{s}:{' '.join(m + c)}" for s, m, c, _ in MISMATCHED_CHECKPOINTS],
)
def test_a_checkpoint_that_does_not_fit_the_runs_config_is_refused(
    script: str,
    made_with: list[str],
    config_says: list[str],
    message: str,
    tmp_path: Path,
    package_logs: None,
) -> None:
    run_dir, cfg = _saved_run(tmp_path, script, made_with, config_says)
    before = set(_tree(tmp_path))
    with pytest.raises(ConfigError) as error:
        open_run(cfg, METHODS[script])
    checkpoint = run_dir / "checkpoints" / "frames_000000000200.pt"
    assert str(error.value).startswith(
        f"resume='{run_dir}': the checkpoint {checkpoint} does not fit the networks the run's "
        "config.yaml builds (env.name="
    )
    assert message in str(error.value)
    assert set(_tree(tmp_path)) == before  # nothing new (train.log has the attempt)


def test_a_checkpoint_of_something_else_is_refused(tmp_path: Path, package_logs) -> None:
    run_dir, cfg = _saved_run(tmp_path, "td3", [], [])
    save_checkpoint(run_dir, {"frames": 400, "weights": torch.zeros(3)})
    with pytest.raises(ConfigError, match=r"frames_000000000400\.pt does not fit .* it holds no "):
        open_run(cfg, METHODS["td3"])


def test_a_checkpoint_that_fits_opens(tmp_path: Path, package_logs) -> None:
    run_dir, cfg = _saved_run(tmp_path, "ld_td3", [], [])
    opened = open_run(cfg, METHODS["ld_td3"])
    assert opened.path == run_dir and opened.state["frames"] == 200


# ---------------------------------------------------------------------------- end to end
def _script(program: str, *args: str, run_root: Path) -> subprocess.CompletedProcess:
    """Runs ``examples/<program>``, or ``python -m <program>`` for a module."""
    command = ["-m", *program.split()] if " " in program else [str(ROOT / "examples" / program)]
    return subprocess.run(
        [sys.executable, *command, *args, f"run_root={run_root}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _garbage_config(tmp_path: Path) -> list[str]:
    run_dir = _run_dir_with(tmp_path, ":::\n  - : [")
    return [f"resume={run_dir}"]


def _mismatched_checkpoint(tmp_path: Path) -> list[str]:
    run_dir, _ = _saved_run(tmp_path, "sac", ["network.hidden=[8,8]"], [])
    return [f"resume={run_dir}"]


#: ``(program, its command line, or what makes a resume's, what the output says)``: one of each
#: kind, through the scripts; what Hydra cannot compose through ``python -m torchrl_mcmc.recipes``,
#: which checks it before Hydra starts (``cli.check_command_line``).
END_TO_END = [
    ("sac.py", ["env.name=CartPole-v1"], "env.name='CartPole-v1': its actions are discrete"),
    ("hmc_sac.py", [f"replay.size={_BIG}"], f"replay.size={_BIG}: the run needs at least"),
    ("td3.py", ["+td3.policy_dely=3"], "td3.policy_dely=3: no such key (did you mean td3."),
    (
        "torchrl_mcmc.recipes ld_td3",
        ["env=Hoper-v4"],
        "env='Hoper-v4': no such option of env (did you mean Hopper-v4?",
    ),
    ("bon_sac.py", _garbage_config, "config.yaml is not YAML: while parsing a block mapping"),
    ("sac.py", _mismatched_checkpoint, "frames_000000000200.pt does not fit the networks"),
]


@pytest.mark.parametrize(
    ("program", "args", "message"), END_TO_END, ids=[p.split()[-1] for p, _, _ in END_TO_END]
)
def test_a_script_exits_2_on_bad_input_at_once_leaving_nothing_new(
    program: str,
    args: list[str] | Callable[[Path], list[str]],
    message: str,
    run_root: Path,
) -> None:
    tmp = run_root.parent
    # A resume's command line is resume= alone; a new run's a smoke run on Pendulum.
    args = args(tmp) if callable(args) else ["preset=smoke", "env=Pendulum-v1", *args]
    before = set(_tree(tmp))
    proc = _script(program, *args, run_root=run_root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert message in out and "Traceback" not in out
    # Refused before anything was built: a run that had started would have made its directory
    # (a resume's: its config.yaml and checkpoint as they were, train.log aside).
    assert set(_tree(tmp)) == before
