"""The example scripts, run for real as a user runs them (subprocess), with tiny budgets."""

from __future__ import annotations

import ast
import csv
import inspect
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
SCRIPTS = ["hmc_sac.py", "sac.py", "bon_sac.py", "ld_td3.py", "td3.py"]


def _run(script: str, *overrides: str, run_root: Path, timeout: int = 300, check: bool = True):
    """Runs ``examples/<script>``, or :func:`~torchrl_mcmc.recipes.train` for a ``script`` of
    the form ``"-m torchrl_mcmc.recipes <recipe>"``."""
    program = script.split() if script.startswith("-m ") else [str(ROOT / "examples" / script)]
    cmd = [sys.executable, *program, *overrides, f"run_root={run_root}"]
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
@pytest.mark.parametrize("script", SCRIPTS)
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
    if script == "hmc_sac.py":  # the default (entropy) prior logs SAC's temperature
        alphas = [v for _, v in _scalar_log(run_dir, "train/alpha")]
        assert alphas and all(0.0 < a < 10.0 for a in alphas)  # tuned from alpha_init = 1


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
    _assert_logged_steps_are_unique(run_dir)


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


def _logged_steps(path: Path) -> list[int]:
    """The steps of a CSV scalar log's complete rows (one may be half-written while it runs)."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    return [int(line.split(",")[0]) for line in lines if line.endswith("\n")]


def _kill_9_once_logged_past_a_checkpoint(cmd: list[str], run_root: Path) -> tuple[Path, int]:
    """Starts ``cmd`` and kills it (SIGKILL: nothing written at exit) once it has logged rows
    past its last checkpoint; its run directory and the frames of that checkpoint."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        pointers = list(run_root.rglob("latest_checkpoint.txt"))
        if pointers:
            run_dir = pointers[0].parent
            rate_log = run_dir / "logs" / "train" / "scalars" / "time" / "frames_per_s.csv"
            checkpoint_frames = int(pointers[0].read_text().strip()[len("frames_") : -len(".pt")])
            if any(step > checkpoint_frames for step in _logged_steps(rate_log)):
                break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    (run_dir,) = _run_dirs(run_root)
    checkpoint = (run_dir / "latest_checkpoint.txt").read_text().strip()
    return run_dir, torch.load(run_dir / "checkpoints" / checkpoint, weights_only=True)["frames"]


def _assert_logged_steps_are_unique(run_dir: Path) -> None:
    logs = sorted((run_dir / "logs").rglob("*.csv"))
    assert logs
    for path in logs:
        steps = _logged_steps(path)
        assert steps == sorted(set(steps)), (path, steps)


def test_resume_with_the_run_directory_alone_continues_a_preset_run(tmp_path: Path) -> None:
    # A quick-preset run (Pendulum, 128 x 128: not the script's Hopper-v4, 256 x 256 defaults),
    # cut short: budget, updates and evaluation shrunk to keep the test short. Killed after its
    # checkpoint at 800 frames, once it has logged further batches.
    started_with = [
        "preset=quick",
        "collector.total_frames=1600",
        "collector.init_random_frames=200",
        "optim.utd_ratio=0.05",
        "eval.interval_frames=400",
        "eval.episodes=1",
        "checkpoint.interval_frames=800",
        "threads=1",
        "progress_bar=false",
    ]
    script = str(ROOT / "examples" / "hmc_sac.py")
    run_dir, killed_at = _kill_9_once_logged_past_a_checkpoint(
        [sys.executable, script, *started_with, f"run_root={tmp_path}"], tmp_path
    )
    assert not (run_dir / "summary.json").exists()
    rate_log = run_dir / "logs" / "train" / "scalars" / "time" / "frames_per_s.csv"
    assert killed_at == 800 and max(_logged_steps(rate_log)) > killed_at

    # resume=<run dir> and nothing else: the run's own configuration goes on.
    _run("hmc_sac.py", f"resume={run_dir}", run_root=tmp_path)
    assert _run_dirs(tmp_path) == [run_dir]  # in place, no new run directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == "Pendulum-v1" and summary["frames"] == 1600
    frames = [h["frames"] for h in summary["eval_history"]]
    assert frames == [400, 800, 1200, 1600]
    # The rows logged after the checkpoint were dropped and logged again: each step once.
    _assert_logged_steps_are_unique(run_dir)
    assert _logged_steps(rate_log) == list(range(200, 1601, 200))
    assert "dropped" in (run_dir / "train.log").read_text()
    final = torch.load(run_dir / "checkpoints" / "frames_000000001600.pt", weights_only=True)
    policy_in = final["method"]["loss"]["actor.policy.module.0.module.0.0.weight"]
    assert policy_in.shape == (128, 3)  # the preset's network, Pendulum's observation

    # A larger budget beside it: applied, logged, and kept in the run's config.yaml.
    _run("hmc_sac.py", f"resume={run_dir}", "collector.total_frames=2000", run_root=tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["frames"] == 2000
    assert "resume: collector.total_frames 1600 -> 2000" in (run_dir / "train.log").read_text()
    saved = (run_dir / "config.yaml").read_text()
    assert "total_frames: 2000" in saved and "resume: null" in saved
    _assert_logged_steps_are_unique(run_dir)
    assert _logged_steps(rate_log) == list(range(200, 2001, 200))

    # What the run is cannot change: exit 2, the key named, the run left as it was.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    proc = _run(
        "hmc_sac.py", f"resume={run_dir}", "hmc.num_steps=3", run_root=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "incompatible: hmc.num_steps was 5, now 3" in proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path: Path) -> None:
    overrides = [*SMOKE, "env=Pendulum-v1"]  # checkpoints at 200 and 400 frames (keep: 2)
    _run("sac.py", *overrides, run_root=tmp_path)
    (run_dir,) = _run_dirs(tmp_path)
    newest = run_dir / "checkpoints" / "frames_000000000400.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a failed copy

    _run("sac.py", f"resume={run_dir}", "collector.total_frames=600", run_root=tmp_path)
    log = (run_dir / "train.log").read_text()
    assert f"checkpoint {newest} is unreadable" in log
    assert "failed finding central directory" in log
    assert "resumed at 200 frames" in log
    assert json.loads((run_dir / "summary.json").read_text())["frames"] == 600
    # Set aside for inspection, out of the rotation.
    assert (newest.parent / (newest.name + ".unreadable")).exists()

    # None intact: a clear error naming the files, exit 2.
    for path in (run_dir / "checkpoints").glob("frames_*.pt"):
        path.write_bytes(b"")
    proc = _run(
        "sac.py", f"resume={run_dir}", "collector.total_frames=800", run_root=tmp_path, check=False
    )
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "no checkpoint of" in out and "can be read" in out
    assert "frames_000000000600.pt (EOFError" in out and "frames_000000000400.pt" in out
    assert "Traceback" not in out


def test_progress_bar_shows_known_values_only_and_log_lines_print_above_it(
    tmp_path: Path,
) -> None:
    # The bar on stderr and the logs on stdout, into one pipe as on a terminal.
    cmd = [sys.executable, str(ROOT / "examples" / "hmc_sac.py"), *SMOKE, "env=Pendulum-v1"]
    proc = subprocess.run(
        [*cmd, "progress_bar=true", f"run_root={tmp_path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stdout
    out = proc.stdout
    # The bar ran, with the temperature of the default (entropy) prior under its SAC name.
    assert "frames/s" in out and "eval=-" in out and "alpha=" in out and "beta=" not in out
    assert "nan" not in out  # no value before it is known
    # A log line starts where a cleared bar was (tqdm.write), never after the bar's text: the
    # segment after the line's last carriage return is the message alone.
    # TorchRL's own coloured handler (green prefix) and ours (through the root logger):
    messages = {"Initialized LazyTensorStorage": "\x1b[92m", "eval return": "frames "}
    for message, start in messages.items():
        lines = [line for line in out.split("\n") if message in line]
        assert lines, message
        for line in lines:
            assert line.split("\r")[-1].startswith(start), line


def test_same_seed_gives_identical_losses(tmp_path: Path) -> None:
    # Twice the script, and once train() (python -m), whose loop the script writes out.
    logs, evals = [], []
    runs = {"a": "hmc_sac.py", "b": "hmc_sac.py", "train": "-m torchrl_mcmc.recipes hmc_sac"}
    for name, script in runs.items():
        _run(script, *SMOKE, "env=Pendulum-v1", run_root=tmp_path / name)
        (run_dir,) = _run_dirs(tmp_path / name)
        logs.append([_scalar_log(run_dir, f"train/{k}") for k in ("loss_qvalue", "loss_actor")])
        evals.append(json.loads((run_dir / "summary.json").read_text())["eval_history"])
    assert logs[0] == logs[1] == logs[2]
    assert len(logs[0][0]) >= 2
    assert evals[0] == evals[1] == evals[2] and len(evals[0]) == 2


def _written_out_loop(source: str, function: str) -> tuple[str, str]:
    """The ``with Run(cfg, <method>) as run:`` block of ``function`` in ``source``: the method's
    name, and the block's body as an AST dump (comments and positions left out)."""
    (func,) = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == function
    ]
    (block,) = [node for node in ast.walk(func) if isinstance(node, ast.With)]
    run = block.items[0].context_expr
    assert ast.unparse(run.func) == "Run" and ast.unparse(block.items[0].optional_vars) == "run"
    return ast.unparse(run.args[1]), ast.dump(ast.Module(body=block.body, type_ignores=[]))


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_writes_out_the_loop_of_train(script: str) -> None:
    from torchrl_mcmc.recipes import METHODS, trainer

    _, expected = _written_out_loop(inspect.getsource(trainer), "train")
    method, loop = _written_out_loop((ROOT / "examples" / script).read_text(), "main")
    assert method == METHODS[script.removesuffix(".py")].__name__
    assert loop == expected, f"examples/{script}'s loop is not train()'s: keep them the same"


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


def _tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("script", "overrides", "messages"),
    [
        (
            "hmc_sac.py",
            ["hmc.step_size=0", "pid.beta_init=20", "threads=-1", "network.activation=bogus"],
            [
                "configuration error: 4 bad values:",
                "hmc.step_size=0: must be a finite number in [1.2e-38, 8.5e+37]",
                "need pid.beta_min <= pid.beta_init <= pid.beta_max",
                "threads=-1: must be an integer >= 0",
                "network.activation='bogus': must be one of 'relu', 'tanh', 'elu', 'silu'",
            ],
        ),
        (
            "ld_td3.py",
            ["flow.update_mode=bogus"],
            ["flow.update_mode='bogus': must be one of 'alternating', 'joint'"],
        ),
        (
            "sac.py",
            ["resume=/no/such/run"],
            ["resume='/no/such/run': no run there (/no/such/run/config.yaml is missing)"],
        ),
    ],
)
def test_bad_input_exits_2_and_leaves_nothing_on_disk(
    script: str, overrides: list[str], messages: list[str], tmp_path: Path
) -> None:
    # An existing run root with something in it, and one that does not exist yet: neither
    # gains a file or a folder (Hydra's run directory and its parents included).
    existing = tmp_path / "existing"
    (existing / "hmc_sac").mkdir(parents=True)
    (existing / "hmc_sac" / "notes.txt").write_text("mine")
    before = _tree(existing)
    for run_root in (existing, tmp_path / "new"):
        started = time.monotonic()
        proc = _run(script, *SMOKE, "env=Pendulum-v1", *overrides, run_root=run_root, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert time.monotonic() - started < 120  # it fails at once, before building anything
        for message in messages:
            assert message in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    assert _tree(existing) == before
    assert not (tmp_path / "new").exists()


def test_resume_of_an_incompatible_run_is_refused(tmp_path: Path) -> None:
    _run("sac.py", *SMOKE, "env=Pendulum-v1", run_root=tmp_path / "sac")
    (sac_dir,) = _run_dirs(tmp_path / "sac")
    proc = _run("hmc_sac.py", f"resume={sac_dir}", run_root=tmp_path / "h", check=False)
    assert proc.returncode == 2
    assert "that run was made by another script: its config (method sac)" in (
        proc.stdout + proc.stderr
    )
    assert not (tmp_path / "h").exists()


def test_linear_policy_option_keeps_the_critic_and_resumes_configs_saved_without_it(
    tmp_path: Path,
) -> None:
    from omegaconf import OmegaConf

    from torchrl_mcmc.recipes import make_critic, make_env, make_stochastic_policy

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
    alphas = [v for _, v in _scalar_log(run_dir, "train/alpha")]
    assert alphas and alphas[0] != alphas[-1]  # the temperature is trained, not fixed
    # SAC's names: no beta (alpha is the temperature) and no policy distance (minus an entropy).
    logged = {p.stem for p in (run_dir / "logs" / "train" / "scalars" / "train").glob("*.csv")}
    assert {"alpha", "loss_alpha", "entropy"} <= logged and not {"beta", "policy_distance"} & logged
    assert all(torch.isfinite(torch.tensor(v)) for _, v in _scalar_log(run_dir, "train/entropy"))
    checkpoint = torch.load(next((run_dir / "checkpoints").glob("*.pt")), weights_only=False)
    assert set(checkpoint["method"]["optimizers"]) == {"policy", "flow", "critic", "alpha"}
    assert checkpoint["method"]["pid"] is None


def test_tier_l_multirun_through_submitit_lands_where_the_grid_reads(tmp_path: Path) -> None:
    # The cluster commands of tier L, run with submitit's local launcher on a smoke budget.
    from benchmarks import learning

    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "LAUNCHER": "submitit_local",
        "SMOKE": "1",
        "METHODS": "sac",
        "ROOT": str(tmp_path / "L"),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "tier_l.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for seed in (0, 1):
        expected = learning.run_dir("L", "sac", "Hopper-v4", seed).relative_to(learning.RUNS / "L")
        summary = json.loads((tmp_path / "L" / expected / "summary.json").read_text())
        assert summary["seed"] == seed and summary["frames"] == 400
