"""The training loop's pieces: a stop between two updates and its exact resume, the guard
against non-finite updates, a trained run back in Python, and what ``summary.json`` records."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_transitions
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_mcmc import __version__
from torchrl_mcmc.recipes import (
    HMCSAC,
    METHODS,
    SAC,
    ExitCode,
    compose_config,
    load_run,
    train,
)
from torchrl_mcmc.recipes import provenance as provenance_module
from torchrl_mcmc.recipes import run as run_module
from torchrl_mcmc.recipes.factories import make_env
from torchrl_mcmc.recipes.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["preset=smoke", "env=Pendulum-v1"]


def _checkpoint(run_dir: Path, frames: int) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / f"frames_{frames:012d}.pt", weights_only=True)


def _scalar_rows(run_dir: Path, up_to: int | None = None) -> dict[str, list[list[str]]]:
    """Every CSV scalar log of the run but the wall-clock ones (``time/``), as rows."""
    scalars = run_dir / "logs" / "train" / "scalars"
    logs = {}
    for path in sorted(scalars.rglob("*.csv")):
        name = str(path.relative_to(scalars))
        if not name.startswith("time/"):
            rows = list(csv.reader(path.read_text().splitlines()))
            logs[name] = [r for r in rows if up_to is None or float(r[0]) <= up_to]
    return logs


def _assert_identical(a: Any, b: Any, where: str, skip: tuple[str, ...] = ()) -> None:
    """``a == b`` to the bit, tensors, dicts and lists all the way down, but for the paths in
    ``skip`` (``where`` spelt as ``checkpoint['progress']['wall_time']``)."""
    if where in skip:
        return
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]", skip)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]", skip)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------------- a stop mid-iteration
#: The paper's HMC-SAC (its PID steps once per iteration, on all the iteration's distances):
#: 10 updates in each of the iterations at 200 and 300 frames, a checkpoint at every batch, an
#: evaluation at the end only (so that no evaluation env is reseeded by a resume before it).
EXACT = [
    *SMOKE,
    "variant=paper",
    "collector.total_frames=300",
    "checkpoint.interval_frames=100",
    "checkpoint.keep=10",
    "eval.interval_frames=1000",
]
#: Where a stop comes, as (the update it comes during, counted from the run's first), and the
#: iteration (frames) it interrupts: one that more batches follow, and the run's last.
STOPS = {"mid-run": (4, 200), "last iteration": (14, 300)}
#: What differs between two runs of the same state: the wall clock and where the logs are.
WALL_CLOCK = (
    "checkpoint['progress']['wall_time']",
    "checkpoint['progress']['scalars']['time/frames_per_s']",
    "checkpoint['logger']",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    run = train(compose_config("hmc_sac", [*EXACT, f"run_root={root}"]), HMCSAC)
    assert run.exit_code == ExitCode.OK
    return run.path


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_between_updates_resumes_exactly(
    stop: str, uninterrupted: Path, tmp_path: Path, monkeypatch
) -> None:
    stop_during, frames = STOPS[stop]
    update, calls = HMCSAC.update, []

    def update_then_signal(self, batch):
        metrics = update(self, batch)
        calls.append(1)
        if len(calls) == stop_during:  # the handler runs at once: the next update must not
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    cfg = compose_config("hmc_sac", [*EXACT, f"run_root={tmp_path}"])
    with monkeypatch.context() as patch:
        patch.setattr(HMCSAC, "update", update_then_signal)
        stopped = train(cfg, HMCSAC)
    assert stopped.exit_code == ExitCode.signalled(signal.SIGTERM) == 143
    assert stopped.summary is None
    # The stop's checkpoint: the batch collected, 4 of its 10 updates done and measured.
    state = _checkpoint(stopped.path, frames)
    progress = state["progress"]
    assert progress["updates"] == stop_during and progress["pending_updates"] == 6
    assert len(progress["iteration_metrics"]) == 4
    if frames == 200:  # the batch ended an episode: its return, to log with the iteration's
        assert "train/episode_return" in progress["scalars"]
    log = (stopped.path / "train.log").read_text()
    assert f"stopped at {frames} frames, 6 updates of its last iteration left" in log

    resumed = train(compose_config("hmc_sac", [*EXACT, f"resume={stopped.path}"]), HMCSAC)
    assert resumed.exit_code == ExitCode.OK
    assert (
        f"finishing the iteration at {frames} frames: 6 updates left"
        in (resumed.path / "train.log").read_text()
    )
    # The end of the interrupted iteration is the uninterrupted run's to the bit: networks,
    # optimisers, PID memory and beta, replay buffer, RNGs and counters, and what was logged.
    _assert_identical(
        _checkpoint(resumed.path, frames),
        _checkpoint(uninterrupted, frames),
        "checkpoint",
        skip=WALL_CLOCK,
    )
    assert _scalar_rows(resumed.path, frames) == _scalar_rows(uninterrupted, frames)
    if stop == "last iteration":  # nothing after it: the whole run ends as the uninterrupted
        expected = json.loads((uninterrupted / "summary.json").read_text())
        for key in ("eval_history", "final_return", "frames", "updates"):
            assert resumed.summary[key] == expected[key], key
        assert _scalar_rows(resumed.path) == _scalar_rows(uninterrupted)


def test_sigterm_during_a_long_update_phase_stops_the_run_within_30_s(tmp_path: Path) -> None:
    # 100 000 updates in the iteration at 200 frames: minutes, where a stop must take seconds.
    overrides = [
        *SMOKE,
        "optim.utd_ratio=1000",
        "eval.interval_frames=1000000",
        "checkpoint.interval_frames=1000000",
        f"run_root={tmp_path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "sac.py"), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        rows = list(tmp_path.rglob("time/frames_per_s.csv"))
        if rows and rows[0].read_text().startswith("100,"):
            break  # the first batch (random frames, no update) is logged: the next one updates
        time.sleep(0.05)
    time.sleep(5)  # its 100 frames collected, well into its updates
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert proc.wait(timeout=120) == ExitCode.signalled(signal.SIGTERM)
    assert time.monotonic() - signalled < 30
    (run_dir,) = {p.parent for p in tmp_path.rglob("config.yaml")}
    progress = _checkpoint(run_dir, 200)["progress"]
    assert 0 < progress["updates"] < 100_000, "the stop must come during the updates"
    assert progress["updates"] + progress["pending_updates"] == 100_000
    assert len(progress["iteration_metrics"]) == progress["updates"]
    assert (
        f"{progress['pending_updates']} updates of its last iteration left"
        in (run_dir / "train.log").read_text()
    )


# ---------------------------------------------------------------------------- non-finite updates
@pytest.mark.parametrize(
    ("utd_ratio", "expected"),
    [("0.5", 45), ("0.05", 4), ("1", 90), ("0.3", 27)],
)
def test_utd_ratio_sets_the_number_of_updates_over_the_run(
    utd_ratio: str, expected: int, tmp_path: Path
) -> None:
    # Batches of 5 frames after 10 random ones: 90 frames call for utd_ratio * 90 updates,
    # however the batches split them (0.5: 2.5 per batch; 0.05: one every 4 batches).
    overrides = [
        *SMOKE,
        "collector.total_frames=100",
        "collector.frames_per_batch=5",
        "collector.init_random_frames=10",
        "replay.batch_size=8",
        f"optim.utd_ratio={utd_ratio}",
        f"run_root={tmp_path}",
    ]
    run = train(compose_config("sac", overrides), SAC)
    assert run.exit_code == ExitCode.OK
    assert run.summary["frames"] == 100 and run.summary["updates"] == expected


def test_a_diverging_run_skips_its_updates_then_stops_with_exit_4(tmp_path: Path) -> None:
    # optim.lr=1e10: the first update blows the weights up, every later loss is inf or nan.
    overrides = [*SMOKE, "optim.lr=1e10", "guard.max_nonfinite_updates=15"]
    run = train(compose_config("sac", [*overrides, f"run_root={tmp_path}"]), SAC)
    assert run.exit_code == ExitCode.DIVERGED == 4
    assert run.summary is None
    # 9 skipped updates in the iteration at 200 frames (logged), 6 more at 300: 15 in a row.
    assert _scalar_rows(run.path)["train/nonfinite_updates.csv"] == [["200", "9.0"]]
    assert all(math.isfinite(float(v)) for _, v in _scalar_rows(run.path)["train/loss_qvalue.csv"])
    log = (run.path / "train.log").read_text()
    assert (
        "training diverged at 300 frames: 15 updates in a row were not finite, their steps "
        "skipped (loss_actor = nan, loss_qvalue = nan"
    ) in log
    assert "a learning rate too large (optim.lr=1e+10)" in log
    assert "stopped at 300 frames, 4 updates of its last iteration left" in log
    # The last finite state, checkpointed: the skipped steps moved no weight and no optimiser
    # state (only the targets' averaging went on, towards the finite weights).
    before, after = (_checkpoint(run.path, frames)["method"] for frames in (200, 300))
    trained = [k for k in after["loss"] if "target" not in k]
    _assert_identical(
        {k: after["loss"][k] for k in trained}, {k: before["loss"][k] for k in trained}, "loss"
    )
    _assert_identical(after["optimizers"], before["optimizers"], "optimizers")
    for value in TensorDict(after["loss"], []).values(True, True):
        assert value.isfinite().all()
    assert _checkpoint(run.path, 300)["progress"]["nonfinite_in_a_row"] == 15


@pytest.mark.parametrize("recipe", sorted(METHODS))
def test_a_skipped_update_moves_no_weight_no_optimiser_state_and_no_target(recipe: str) -> None:
    """Every critic weight is inf: each loss is non-finite, each step skipped, over as many
    updates as the actor waits for (TD3's delay), targets included."""
    cfg = compose_config(recipe, SMOKE)
    env = make_env(cfg)
    method = METHODS[recipe](cfg, env, torch.device("cpu"))
    env.close()
    obs_dim = env.observation_spec["observation"].shape[-1]
    batch = make_transitions(obs_dim, env.action_spec.shape[-1], 32)
    method.loss.qvalue_network_params.apply(lambda p: p.data.fill_(math.inf))
    before = copy.deepcopy(method.state_dict())
    for _ in range(getattr(method, "policy_delay", 1)):
        method.update(batch.clone())
    assert method.nonfinite_steps >= 1
    after = method.state_dict()
    _assert_identical(after["loss"], before["loss"], "loss")
    # LD-TD3's flows all diverge on that critic: its policy and flow losses are zeros with zero
    # gradients (docs/running.md), finite steps that move no weight; its critic's is skipped.
    skipped = ["critic"] if recipe == "ld_td3" else list(after["optimizers"])
    for name in skipped:
        _assert_identical(after["optimizers"][name], before["optimizers"][name], name)


# ---------------------------------------------------------------------------- a trained run
def test_train_returns_the_run_and_load_run_gives_back_its_actor(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    # eval.video where rendering passes the check, then fails: the summary is there all the same.
    def no_gl(*args, **kwargs):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(run_module, "video_problem", lambda cfg: None)
    monkeypatch.setattr(run_module, "record_video", no_gl)
    cfg = compose_config(
        "sac", ["preset=smoke", "env=Hopper-v4", "eval.video=true", f"run_root={tmp_path}"]
    )
    with caplog.at_level("INFO", logger="torchrl_mcmc"):
        run = train(cfg, SAC)
    assert run.exit_code == ExitCode.OK
    assert run.summary == json.loads((run.path / "summary.json").read_text())
    assert run.summary["frames"] == 400 and not (run.path / "episode.gif").exists()
    assert "eval.video: no episode.gif (RuntimeError: no OpenGL context)" in caplog.text

    trained = load_run(run.path)
    assert trained.frames == 400 and trained.summary == run.summary
    assert trained.cfg.env.name == "Hopper-v4" and type(trained.method) is SAC
    # The actor saved: the same deterministic actions as the one that trained.
    observations = TensorDict({"observation": torch.randn(16, 11)}, [16])
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        actions = [m.policy(observations.clone())["action"] for m in (run.method, trained.method)]
    torch.testing.assert_close(actions[0], actions[1], rtol=0, atol=0)
    episode = trained.rollout(max_steps=20, seed=0)
    assert 0 < episode.shape[0] <= 20 and episode["action"].abs().max() <= 1

    # The run's checkpoint as a CUDA run writes it (every tensor tagged "cuda:0"): plain
    # torch.load refuses it on this machine, load_run reads it onto the CPU.
    newest = run.path / "checkpoints" / "frames_000000000400.pt"
    state = torch.load(newest, weights_only=True)
    as_cuda = (0, lambda storage: "cuda:0", lambda storage, location: None)
    monkeypatch.setattr(
        torch.serialization, "_package_registry", [as_cuda, *torch.serialization._package_registry]
    )
    torch.save(state, newest)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA device"):
            torch.load(newest, weights_only=True)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        moved = load_run(run.path).method.policy(observations.clone())["action"]
    torch.testing.assert_close(moved, actions[0], rtol=0, atol=0)

    # A video of it, where this machine renders MuJoCo off-screen.
    gif = tmp_path / "hopper.gif"
    script = f"from torchrl_mcmc.recipes import load_run; load_run({str(run.path)!r})"
    script += f".record_video({str(gif)!r}, max_steps=10)"
    outputs = []
    for backend in ("egl", "osmesa"):
        proc = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MUJOCO_GL": backend, "PYTHONWARNINGS": "ignore"},
        )
        if proc.returncode == 0:
            break
        outputs.append(f"MUJOCO_GL={backend}: {proc.stderr[-300:]}")
    else:
        pytest.skip(f"no OpenGL backend renders here: {outputs}")
    import imageio.v2 as imageio

    frames = imageio.mimread(gif)
    assert 1 <= len(frames) <= 10 and frames[0].shape[-1] in (3, 4)


def test_train_from_python_logs_to_the_console(tmp_path: Path) -> None:
    # Outside a Hydra app nothing configured logging: the run's lines must still show.
    cfg = ["preset=smoke", "env=Pendulum-v1", "collector.total_frames=100", f"run_root={tmp_path}"]
    script = (
        "from torchrl_mcmc.recipes import SAC, compose_config, train\n"
        f"run = train(compose_config('sac', {cfg!r}), SAC)\n"
        "print('exit code', run.exit_code, 'frames', run.summary['frames'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "[torchrl_mcmc.recipes.run_dir][INFO] - run directory: " in proc.stdout
    assert "[torchrl_mcmc.recipes.run][INFO] - final return " in proc.stdout
    assert proc.stdout.rstrip().endswith("exit code 0 frames 100")


def test_eval_video_without_an_opengl_backend_is_refused_before_training(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(MUJOCO_GL="glfw", PYTHONWARNINGS="ignore")  # a window system, and none here
    cmd = [sys.executable, "-m", "torchrl_mcmc.recipes", "sac", "preset=smoke", "env=Hopper-v4"]
    proc = subprocess.run(
        [*cmd, "eval.video=true", f"run_root={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.BAD_INPUT, out
    assert "eval.video=true: Hopper-v4 cannot be rendered here" in out
    assert "MUJOCO_GL=glfw" in out and "start the run with MUJOCO_GL=egl" in out
    assert "Traceback" not in out
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("*.pt"))


# ---------------------------------------------------------------------------- provenance
def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_records_the_version_and_a_commit_only_from_a_source_checkout(
    tmp_path: Path, monkeypatch
) -> None:
    here = provenance()
    assert here["versions"]["torchrl_mcmc"] == __version__
    assert here["git_commit"] == _git(ROOT, "rev-parse", "HEAD")  # this checkout

    # An installed package inside some other repository (a virtual environment in a project):
    # that repository's commit is not the package's.
    repo = tmp_path / "project"
    package = repo / ".venv" / "site-packages" / "torchrl_mcmc"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (repo / ".gitignore").write_text(".venv/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".gitignore")
    _git(repo, "commit", "-q", "-m", "a project")
    monkeypatch.setattr(provenance_module, "_PACKAGE_DIR", package)
    installed = provenance()
    assert installed["git_commit"] == "" and installed["git_dirty"] is False

    # A checkout that tracks the package's files: its commit, and whether it was edited.
    _git(repo, "add", "-f", ".venv/site-packages/torchrl_mcmc/__init__.py")
    _git(repo, "commit", "-q", "-m", "the package")
    checkout = provenance()
    assert checkout["git_commit"] == _git(repo, "rev-parse", "HEAD") and not checkout["git_dirty"]
    (package / "__init__.py").write_text('__version__ = "0.2.0"\n')
    assert provenance()["git_dirty"] is True
