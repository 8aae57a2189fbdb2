"""What :func:`~torchrl_mcmc.recipes.load_run` and :class:`~torchrl_mcmc.recipes.TrainedRun`
refuse: a run directory, configuration, summary, checkpoint, device or method that cannot be
loaded, and bad arguments of the trained run's methods, each one error naming the argument, its
value and what is allowed, before anything is built. One trained smoke run serves the module."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_mcmc.recipes import (
    HMCSAC,
    SAC,
    ConfigError,
    TrainedRun,
    compose_config,
    load_run,
    train,
)
from torchrl_mcmc.recipes import trained as trained_module
from torchrl_mcmc.recipes.checkpoint import CHECKPOINT_POINTER, CheckpointError, save_checkpoint
from torchrl_mcmc.recipes.factories import make_env

SMOKE = ["preset=smoke", "env=Pendulum-v1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SAC smoke run on Pendulum-v1, trained once for the module (never changed: a test
    that damages a run damages a copy)."""
    root = tmp_path_factory.mktemp("runs")
    run = train(compose_config("sac", [*SMOKE, f"run_root={root}"]), SAC)
    assert run.exit_code == 0
    return run.path


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> TrainedRun:
    return load_run(run_dir)


@pytest.fixture
def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes building an env (and so a method, a rollout, an evaluation, a video) fail: a check
    that passes with it ran before anything was built."""

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("something was built before the arguments were checked")

    for name in ("make_env", "make_eval_env", "record_video"):
        monkeypatch.setattr(trained_module, name, built)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _write(name: str, text: str) -> Callable[[Path], Path]:
    def prepare(run: Path) -> Path:
        (run / name).write_text(text)
        return run

    return prepare


def _set_in_config(key: str, value: Any) -> Callable[[Path], Path]:
    def prepare(run: Path) -> Path:
        cfg = OmegaConf.load(run / "config.yaml")
        OmegaConf.update(cfg, key, value)
        OmegaConf.save(cfg, run / "config.yaml")
        return run

    return prepare


def _remove_checkpoints(keep_pointer: bool) -> Callable[[Path], Path]:
    def prepare(run: Path) -> Path:
        shutil.rmtree(run / "checkpoints")
        if not keep_pointer:
            (run / CHECKPOINT_POINTER).unlink()
        return run

    return prepare


def _damage_checkpoints(run: Path) -> Path:
    for path in (run / "checkpoints").glob("frames_*.pt"):
        path.write_bytes(b"not a checkpoint")
    return run


def _no_sections(run: Path) -> Path:
    (run / "config.yaml").write_text("method: sac\nseed: 0\n")
    return run


_UNSEEN_GPU = f"cuda:{torch.cuda.device_count()}"  # one past the last: on no machine

#: ``(prepare the copied run -> run_dir argument, load_run's other arguments, the error, the
#: parts of its message, whether the method is built before it is raised)``.
_BAD_RUNS = {
    "missing folder": (
        lambda run: run.parent / "nowhere",
        {},
        ConfigError,
        ["run_dir=", "nowhere", "no such folder", "does not exist"],
        False,
    ),
    "a file": (
        lambda run: run / "config.yaml",
        {},
        ConfigError,
        ["run_dir=", "config.yaml is a file", "must be a run directory", "its folder"],
        False,
    ),
    "no run": (
        lambda run: run / "logs",
        {},
        ConfigError,
        ["run_dir=", "no run there", "logs/config.yaml is missing"],
        False,
    ),
    "not a path": (lambda run: 5, {}, TypeError, ["run_dir must be", "run_dir=5"], False),
    "empty config": (
        _write("config.yaml", ""),
        {},
        ConfigError,
        ["run_dir=", "config.yaml is empty"],
        False,
    ),
    "config not YAML": (
        _write("config.yaml", "method: [sac\n"),
        {},
        ConfigError,
        ["run_dir=", "config.yaml is not YAML"],
        False,
    ),
    "config a string": (
        _write("config.yaml", "just some text\n"),
        {},
        ConfigError,
        ["run_dir=", "holds a string, not a run's configuration (a mapping)"],
        False,
    ),
    "config a list": (
        _write("config.yaml", "- method\n- sac\n"),
        {},
        ConfigError,
        ["run_dir=", "holds a list, not a run's configuration (a mapping)"],
        False,
    ),
    "config of no recipe": (
        _no_sections,
        {},
        ConfigError,
        ["run_dir=", "cannot tell which recipe", "the sections of no recipe", "pass method_cls"],
        False,
    ),
    "summary not JSON": (
        _write("summary.json", "{not json"),
        {},
        ConfigError,
        ["run_dir=", "summary.json is not JSON"],
        False,
    ),
    "summary a list": (
        _write("summary.json", "[1, 2]"),
        {},
        ConfigError,
        ["run_dir=", "summary.json holds list, not a run's summary (a JSON object)"],
        False,
    ),
    "no checkpoint": (
        _remove_checkpoints(keep_pointer=False),
        {},
        CheckpointError,
        ["run_dir=", "the run has no checkpoint yet: nothing to load"],
        False,
    ),
    "a pointer to no checkpoint": (
        _remove_checkpoints(keep_pointer=True),
        {},
        CheckpointError,
        ["run_dir=", "no checkpoint of", "Nothing can be loaded from it"],
        False,
    ),
    "unreadable checkpoints": (
        _damage_checkpoints,
        {},
        CheckpointError,
        ["run_dir=", "can be read", "frames_000000000400.pt", "Nothing can be loaded from it"],
        False,
    ),
    "config changed since": (
        _set_in_config("network.hidden", [16, 16]),
        {},
        ConfigError,
        ["run_dir=", "does not fit the networks", "config.yaml builds with SAC", "(32,"],
        True,
    ),
    "device not seen": (
        lambda run: run,
        {"device": _UNSEEN_GPU},
        ConfigError,
        [f"device='{_UNSEEN_GPU}'", "must be auto, cpu, cuda or cuda:N", "it sees"],
        False,
    ),
    "device misspelt": (
        lambda run: run,
        {"device": "gpu"},
        ConfigError,
        ["device='gpu'", "must be auto, cpu, cuda or cuda:N"],
        False,
    ),
    "device not a name": (
        lambda run: run,
        {"device": 3},
        ConfigError,
        ["device=3", "must be a str or a torch.device"],
        False,
    ),
    "method_cls a name": (
        lambda run: run,
        {"method_cls": "sac"},
        TypeError,
        ["method_cls='sac'", "method_cls must be None", "SAC, HMCSAC"],
        False,
    ),
    "method_cls of another recipe": (
        lambda run: run,
        {"method_cls": HMCSAC},
        ConfigError,
        [
            "method_cls=HMCSAC: this configuration is not HMCSAC's: it lacks hmc, pid; it has sac",
            "must be SAC, or None",
        ],
        False,
    ),
}


@pytest.mark.parametrize(
    ("prepare", "kwargs", "error", "parts", "builds"), _BAD_RUNS.values(), ids=_BAD_RUNS
)
def test_load_run_refuses_what_it_cannot_load(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[[Path], Any],
    kwargs: dict[str, Any],
    error: type[Exception],
    parts: list[str],
    builds: bool,
) -> None:
    argument = prepare(_copy(run_dir, tmp_path))
    if not builds:
        monkeypatch.setattr(trained_module, "make_env", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(error) as raised:
        load_run(argument, **kwargs)
    assert type(raised.value) is error
    message = str(raised.value)
    for part in parts:
        assert part in message
    assert "start a new one" not in message  # a resume's advice: nothing here continues


#: What the package's integer check raises for a non-integer, and the trained run's methods.
_NOT_AN_INTEGER = TypeError

_BAD_ARGUMENTS = [
    ("rollout", {"max_steps": 0}, ValueError, ["max_steps must be an integer >= 1", "=0."]),
    ("rollout", {"max_steps": -3}, ValueError, ["or None", "(200)", "max_steps=-3"]),
    ("rollout", {"max_steps": 2.5}, _NOT_AN_INTEGER, ["max_steps=2.5"]),
    ("rollout", {"seed": -1}, ValueError, ["seed must be an integer >= 0, or None", "=-1"]),
    ("evaluate", {"episodes": 0}, ValueError, ["episodes must be an integer >= 1", "=0."]),
    ("evaluate", {"episodes": -1}, ValueError, ["eval.episodes (1)", "episodes=-1"]),
    ("evaluate", {"episodes": 1.5}, _NOT_AN_INTEGER, ["episodes must be", "episodes=1.5"]),
    ("evaluate", {"episodes": True}, _NOT_AN_INTEGER, ["episodes=True"]),
    ("evaluate", {"seed": "0"}, _NOT_AN_INTEGER, ["seed must be an integer >= 0", "seed='0'"]),
    (
        "record_video",
        {"path": "VIDEO", "max_steps": 0},
        ValueError,
        ["max_steps must be an integer >= 1", "max_steps=0"],
    ),
    ("record_video", {"path": 3}, TypeError, ["path must be a file path", "path=3"]),
    ("record_video", {"path": "episode.mp4"}, ValueError, ["must end in .gif"]),
    (
        "record_video",
        {"path": "/nowhere/at/all/episode.gif"},
        ValueError,
        ["path='/nowhere/at/all/episode.gif'", "its folder /nowhere/at/all does not exist"],
    ),
]


@pytest.mark.usefixtures("no_building")
@pytest.mark.parametrize(
    ("call", "kwargs", "error", "parts"),
    _BAD_ARGUMENTS,
    ids=[f"{call} {kwargs}" for call, kwargs, _, _ in _BAD_ARGUMENTS],
)
def test_trained_run_refuses_bad_arguments(
    trained: TrainedRun,
    tmp_path: Path,
    call: str,
    kwargs: dict[str, Any],
    error: type[Exception],
    parts: list[str],
) -> None:
    if kwargs.get("path") == "VIDEO":
        kwargs = {**kwargs, "path": tmp_path / "episode.gif"}
    with pytest.raises(error) as raised:
        getattr(trained, call)(**kwargs)
    assert type(raised.value) is error and isinstance(raised.value, ValueError | TypeError)
    for part in parts:
        assert part in str(raised.value)


def test_trained_run_takes_good_arguments(trained: TrainedRun) -> None:
    assert 1 <= trained.rollout(max_steps=3, seed=1).shape[0] <= 3
    assert isinstance(trained.evaluate(episodes=1, seed=2), float)
    assert load_run(trained.path, device=torch.device("cpu")).frames == 400


def test_load_run_tells_the_recipe_from_the_config_sections(run_dir: Path, tmp_path: Path) -> None:
    # ``method`` is a free name: an HMC-SAC run named "sac" is HMC-SAC's (its section hmc).
    cfg = compose_config("hmc_sac", [*SMOKE, "method=sac"])
    hmc_run = tmp_path / "hmc_run"
    hmc_run.mkdir()
    OmegaConf.save(cfg, hmc_run / "config.yaml", resolve=True)
    env = make_env(cfg)
    method = HMCSAC(cfg, env, torch.device("cpu"))
    env.close()
    save_checkpoint(hmc_run, {"frames": 0, "method": method.state_dict()})
    loaded = load_run(hmc_run)
    assert type(loaded.method) is HMCSAC and loaded.frames == 0 and loaded.summary is None
    with pytest.raises(
        ConfigError, match=r"method_cls=SAC: .* it lacks sac; it has hmc, pid, .* must be HMCSAC"
    ):
        load_run(hmc_run, method_cls=SAC)
    # And a SAC run named after another recipe is SAC's.
    sac_run = _set_in_config("method", "hmc_sac")(_copy(run_dir, tmp_path))
    assert type(load_run(sac_run).method) is SAC
