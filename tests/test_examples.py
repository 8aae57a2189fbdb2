"""The example scripts, run for real as a user runs them (subprocess), with tiny budgets."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["preset=smoke"]


def _run(script: str, *overrides: str, run_root: Path, timeout: int = 300, check: bool = True):
    cmd = [sys.executable, str(ROOT / "examples" / script), *overrides, f"run_root={run_root}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_dirs(run_root: Path) -> list[Path]:
    return sorted(p.parent for p in run_root.rglob("config.yaml"))


def _scalar_log(run_dir: Path, name: str) -> list[tuple[int, float]]:
    path = run_dir / "logs" / "train" / "scalars" / f"{name}.csv"
    with open(path) as f:
        return [(int(float(step)), float(value)) for step, value in csv.reader(f)]


@pytest.mark.parametrize("env_name", ["Pendulum-v1", "Hopper-v4"])
@pytest.mark.parametrize("script", ["hmc_sac.py", "sac.py", "bon_sac.py", "ld_td3.py", "td3.py"])
def test_script_runs_end_to_end(script: str, env_name: str, tmp_path: Path) -> None:
    _run(script, *SMOKE, f"env={env_name}", run_root=tmp_path)
    (run_dir,) = _run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 400 and summary["env"] == env_name
    assert len(summary["eval_history"]) == 2
    assert summary["final_return"] == pytest.approx(
        sum(h["eval_return"] for h in summary["eval_history"]) / 2
    )
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    evals = _scalar_log(run_dir, "eval/return")
    assert [step for step, _ in evals] == [200, 400]
    losses = _scalar_log(run_dir, "train/loss_qvalue")
    assert losses and all(torch.isfinite(torch.tensor(v)) for _, v in losses)
    if script == "hmc_sac.py":
        betas = [v for _, v in _scalar_log(run_dir, "train/beta")]
        assert all(0.001 <= b <= 10.0 for b in betas)


@pytest.mark.parametrize("script", ["hmc_sac.py", "ld_td3.py"])
def test_kill_9_then_resume_continues_the_frame_counter(script: str, tmp_path: Path) -> None:
    overrides = [*SMOKE, "env=Pendulum-v1", "collector.total_frames=1200"]
    cmd = [sys.executable, str(ROOT / "examples" / script), *overrides]
    proc = subprocess.Popen(
        [*cmd, f"run_root={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 240
    pointer = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(tmp_path.rglob("latest_checkpoint.txt"))
        if found:
            pointer = found[0]
            break
        time.sleep(0.05)
    assert pointer is not None, "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = pointer.parent
    # Whatever the pointer names at kill time is complete and loads with weights_only=True.
    ckpt_name = pointer.read_text().strip()
    state = torch.load(run_dir / "checkpoints" / ckpt_name, weights_only=True)
    killed_at = state["frames"]
    assert 200 <= killed_at < 1200
    _run(script, *overrides, f"resume={run_dir}", run_root=tmp_path)
    assert _run_dirs(tmp_path) == [run_dir]  # resumed in place, no new run directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 1200
    frames = [h["frames"] for h in summary["eval_history"]]
    assert frames == sorted(set(frames)) and frames[-1] == 1200
    assert f"resumed at {killed_at} frames" in (run_dir / "train.log").read_text()
    final = torch.load(
        run_dir / "checkpoints" / (run_dir / "latest_checkpoint.txt").read_text().strip(),
        weights_only=True,
    )
    assert final["frames"] == 1200
    assert final["progress"]["updates"] > state["progress"]["updates"]


def test_sigterm_writes_a_checkpoint_between_intervals_and_the_run_resumes(
    tmp_path: Path,
) -> None:
    # Checkpoint interval beyond the budget: only the stop request can have written one.
    overrides = [
        *SMOKE,
        "env=Pendulum-v1",
        "collector.total_frames=2000",
        "checkpoint.interval_frames=1000000",
        "eval.interval_frames=100",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "sac.py"), *overrides, f"run_root={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(tmp_path.rglob("train.log"))
        if logs and "eval return" in logs[0].read_text():
            break  # training has begun
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    (run_dir,) = _run_dirs(tmp_path)
    assert not (run_dir / "summary.json").exists()  # stopped, not finished
    pointer = (run_dir / "latest_checkpoint.txt").read_text().strip()
    state = torch.load(run_dir / "checkpoints" / pointer, weights_only=True)
    stopped_at = state["frames"]
    assert 100 <= stopped_at < 2000
    assert f"stopped at {stopped_at} frames" in (run_dir / "train.log").read_text()
    _run("sac.py", *overrides, f"resume={run_dir}", run_root=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 2000
    assert f"resumed at {stopped_at} frames" in (run_dir / "train.log").read_text()


def test_same_seed_gives_identical_losses(tmp_path: Path) -> None:
    logs = []
    for name in ("a", "b"):
        _run("hmc_sac.py", *SMOKE, "env=Pendulum-v1", run_root=tmp_path / name)
        (run_dir,) = _run_dirs(tmp_path / name)
        logs.append([_scalar_log(run_dir, f"train/{k}") for k in ("loss_qvalue", "loss_actor")])
    assert logs[0] == logs[1]
    assert len(logs[0][0]) >= 2


def test_hydra_multirun_makes_one_run_directory_per_job(tmp_path: Path) -> None:
    _run(
        "sac.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SMOKE,
        "env=Pendulum-v1",
        "seed=0,1",
        run_root=tmp_path,
    )
    run_dirs = _run_dirs(tmp_path)
    assert len(run_dirs) == 2
    seeds = sorted(json.loads((d / "summary.json").read_text())["seed"] for d in run_dirs)
    assert seeds == [0, 1]


def test_two_collector_workers_run(tmp_path: Path) -> None:
    _run(
        "hmc_sac.py",
        *SMOKE,
        "env=Pendulum-v1",
        "collector.num_workers=2",
        run_root=tmp_path,
    )
    (run_dir,) = _run_dirs(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["frames"] == 400


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["env.name=NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
        (["collector.total_frames=0"], "collector.total_frames must be > 0"),
        (["collector.frames_per_batch=-5"], "collector.frames_per_batch must be > 0"),
        (["replay.batch_size=0"], "replay.batch_size must be > 0"),
        (["hmc.num_steps=-1"], "hmc.num_steps (K) must be >= 0"),
        (["pid.target=0"], "pid.target must be > 0"),
        (["network.policy_hidden=[0]"], "network.policy_hidden must be a list of positive"),
        (["resume=/no/such/run"], "no run there"),
        (["device=cuda:7"], "device='cuda:7' is unavailable"),
    ],
)
def test_bad_input_fails_fast_and_leaves_no_run_directory(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    if overrides == ["device=cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    proc = _run("hmc_sac.py", *SMOKE, *overrides, run_root=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.yaml"))
    assert not tmp_path.exists() or not any(p.is_file() for p in tmp_path.rglob("*"))


def test_resume_of_an_incompatible_run_is_refused(tmp_path: Path) -> None:
    _run("sac.py", *SMOKE, "env=Pendulum-v1", run_root=tmp_path / "sac")
    (sac_dir,) = _run_dirs(tmp_path / "sac")
    proc = _run(
        "hmc_sac.py",
        *SMOKE,
        "env=Pendulum-v1",
        f"resume={sac_dir}",
        run_root=tmp_path / "h",
        check=False,
    )
    assert proc.returncode != 0
    assert "incompatible: method was sac, now hmc_sac" in proc.stdout + proc.stderr
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").rglob("*.yaml"))


def test_linear_policy_option_keeps_the_critic_and_resumes_configs_saved_without_it(
    tmp_path: Path,
) -> None:
    from omegaconf import OmegaConf

    from examples.utils import make_critic, make_env, make_stochastic_policy

    cfg = OmegaConf.create(
        {
            "env": {"name": "Pendulum-v1", "max_episode_steps": 200},
            "network": {
                "hidden": [32, 32],
                "policy_hidden": [],
                "activation": "relu",
                "default_scale": 1.0,
            },
        }
    )
    env = make_env(cfg)
    policy_layers = [
        m for m in make_stochastic_policy(cfg, env).modules() if isinstance(m, torch.nn.Linear)
    ]
    assert [(m.in_features, m.out_features) for m in policy_layers] == [(3, 2)]  # linear
    critic_layers = [m for m in make_critic(cfg, env).modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in critic_layers] == [32, 32, 1]  # the critic is unchanged

    # A run saved before the key existed (no policy_hidden in its config) still resumes.
    _run("sac.py", *SMOKE, "env=Pendulum-v1", "collector.total_frames=200", run_root=tmp_path)
    (run_dir,) = _run_dirs(tmp_path)
    saved = OmegaConf.load(run_dir / "config.yaml")
    del saved.network["policy_hidden"]
    OmegaConf.save(saved, run_dir / "config.yaml")
    _run("sac.py", *SMOKE, "env=Pendulum-v1", f"resume={run_dir}", run_root=tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 400


def test_entropy_prior_and_cheap_options_train_and_log_alpha(tmp_path: Path) -> None:
    # The screening variants: SAC's entropy objective through the chain (alpha tuned, no PID),
    # one critic in the potential, the base policy's next action, h every second update.
    _run(
        "hmc_sac.py",
        *SMOKE,
        "env=Pendulum-v1",
        "hmc.prior=uniform",
        "hmc.potential_critic=first",
        "hmc.next_action=base",
        "hmc.h_update_interval=2",
        run_root=tmp_path,
    )
    (run_dir,) = _run_dirs(tmp_path)
    alphas = [v for _, v in _scalar_log(run_dir, "train/beta")]
    assert alphas and alphas[0] != alphas[-1]  # the temperature is trained, not fixed
    assert all(torch.isfinite(torch.tensor(v)) for _, v in _scalar_log(run_dir, "train/entropy"))
    checkpoint = torch.load(next((run_dir / "checkpoints").glob("*.pt")), weights_only=False)
    assert set(checkpoint["method"]["optimizers"]) == {"policy", "hmc", "critic", "alpha"}
    assert checkpoint["method"]["pid"] is None
