"""Every config value of the scripts is checked, and a resume keeps the run's configuration.

End-to-end runs of the scripts with bad values and resumes are in ``test_examples.py``; here the
rules themselves, on configurations composed by Hydra as the scripts compose them.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from torchrl_mcmc.recipes import CONFIG_DIR
from torchrl_mcmc.recipes.config_rules import (
    CONFIG_RULES,
    ConfigError,
    config_problems,
    leaves,
    validate_config,
)
from torchrl_mcmc.recipes.resume import RESUME_MAY_CHANGE, requested_keys, resume_config

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


#: ``(script, override, the whole message)``: the key, the bad value and what is allowed.
BAD_VALUES = [
    ("bon_sac", "bon.num_samples=0", "bon.num_samples=0: must be an integer >= 1"),
    # The 13 of issue 10 that got no clean error.
    ("hmc_sac", "hmc.num_steps=2.5", "hmc.num_steps=2.5: must be an integer >= 0"),
    ("hmc_sac", "hmc.step_size=0", "hmc.step_size=0: must be a finite number > 0"),
    ("hmc_sac", "hmc.step_size=-1", "hmc.step_size=-1: must be a finite number > 0"),
    ("hmc_sac", "pid.beta_min=0", "pid.beta_min=0: must be a finite number > 0"),
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
    ("hmc_sac", "hmc.pessimism=-1", "hmc.pessimism=-1: must be a finite number >= 0"),
    (
        "hmc_sac",
        "hmc.pessimism=2",
        "hmc.potential_critic='first', hmc.pessimism=2: pessimism is read only with "
        "potential_critic=mean_std (leave it at 1.0 otherwise)",
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
    ("ld_td3", "flow.pessimism=nan", "flow.pessimism=nan: must be a finite number >= 0"),
    (
        "ld_td3",
        "flow.pessimism=0.5",
        "flow.potential_critic='min', flow.pessimism=0.5: pessimism is read only with "
        "potential_critic=mean_std (leave it at 1.0 otherwise)",
    ),
    ("hmc_sac", "hmc.next_action=mode", "hmc.next_action='mode': must be one of 'chain', 'base'"),
    (
        "hmc_sac",
        "hmc.value_entropy=full",
        "hmc.value_entropy='full': must be one of 'none', 'auxiliary', or null",
    ),
    ("hmc_sac", "hmc.alpha_init=0", "hmc.alpha_init=0: must be a finite number > 0"),
    ("hmc_sac", "pid.enabled=on", "pid.enabled='on': must be true or false"),
    ("hmc_sac", "pid.target=0", "pid.target=0: must be a finite number > 0"),
    ("hmc_sac", "pid.kp=-1", "pid.kp=-1: must be a finite number >= 0, or null"),
    ("hmc_sac", "pid.ki=inf", "pid.ki=inf: must be a finite number >= 0, or null"),
    ("hmc_sac", "pid.kd=-0.5", "pid.kd=-0.5: must be a finite number >= 0"),
    ("hmc_sac", "pid.beta_max=nan", "pid.beta_max=nan: must be a finite number > 0"),
    ("sac", "seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
    (
        "sac",
        "device=tpu",
        "device='tpu': must be auto, cpu, cuda or cuda:N naming a CUDA device torch sees",
    ),
    ("sac", "run_root=''", "run_root='': must be a non-empty string"),
    ("sac", "resume=''", "resume='': must be a non-empty string, or null"),
    ("sac", "method=''", "method='': must be a non-empty string"),
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
    ("sac", "optim.polyak=-0.1", "optim.polyak=-0.1: must be a finite number >= 0 and <= 1"),
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
    ("sac", "network.default_scale=0", "network.default_scale=0: must be a finite number > 0"),
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
    ("sac", "logger.exp_name=''", "logger.exp_name='': must be a non-empty string"),
    ("sac", "sac.alpha_init=0", "sac.alpha_init=0: must be a finite number > 0"),
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
    ("ld_td3", "flow.step_size=0", "flow.step_size=0: must be a finite number > 0"),
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
    cfg = _compose(script, override)
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
