"""The recipes as a package: trained from Python and from ``python -m torchrl_mcmc.recipes``,
shipped with their configurations, and never imported by the library."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import torch
from omegaconf import OmegaConf

from torchrl_mcmc.recipes import CONFIG_DIR, HMCSAC, compose_config, train

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "torchrl_mcmc"
SMOKE = ["preset=smoke", "env=Pendulum-v1"]


def _python(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_the_smoke_preset_trains_and_resumes_from_python(tmp_path: Path) -> None:
    cfg = compose_config("hmc_sac", [*SMOKE, f"run_root={tmp_path}"])
    assert train(cfg, HMCSAC).exit_code == 0
    # The scripts' run directory layout, without Hydra.
    (run_dir,) = (tmp_path / "hmc_sac" / "Pendulum-v1").glob("seed0-*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "hmc_sac" and summary["frames"] == 400
    assert len(summary["eval_history"]) == 2

    # A resume from Python: the run's own configuration, with a larger budget.
    saved = OmegaConf.load(run_dir / "config.yaml")
    saved.resume = str(run_dir)
    saved.collector.total_frames = 600
    assert train(saved, HMCSAC).exit_code == 0
    assert json.loads((run_dir / "summary.json").read_text())["frames"] == 600
    log = (run_dir / "train.log").read_text()
    assert "resumed at 400 frames" in log
    assert "resume: collector.total_frames 400 -> 600" in log
    final = torch.load(run_dir / "checkpoints" / "frames_000000000600.pt", weights_only=True)
    assert list(final["method"]["optimizers"]) == ["policy", "flow", "critic", "alpha"]


def test_python_m_trains_a_recipe_from_its_shipped_configuration(tmp_path: Path) -> None:
    # From another directory: the package and the configurations it ships are all it needs.
    proc = _python(
        "-m", "torchrl_mcmc.recipes", "td3", *SMOKE, f"run_root={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = (tmp_path / "td3" / "Pendulum-v1").glob("seed0-*/summary.json")
    assert json.loads(summary.read_text())["frames"] == 400


def test_python_m_refuses_bad_input_with_status_2(tmp_path: Path) -> None:
    bad = ["optim.gamma=1.5", f"run_root={tmp_path / 'new'}"]
    proc = _python("-m", "torchrl_mcmc.recipes", "sac", *bad, cwd=tmp_path)
    assert proc.returncode == 2
    assert "optim.gamma=1.5: must be a finite number >= 0 and <= 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "new").exists()  # checked before Hydra made a directory
    proc = _python("-m", "torchrl_mcmc.recipes", "ppo", cwd=tmp_path)
    assert proc.returncode == 2
    assert "invalid choice: 'ppo'" in proc.stderr and "hmc_sac" in proc.stderr


def test_every_shipped_configuration_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["torchrl_mcmc.recipes.config"]
    shipped = {p for pattern in patterns for p in CONFIG_DIR.glob(pattern)}
    assert set(CONFIG_DIR.rglob("*.yaml")) == shipped


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_recipes() -> None:
    library = [p for p in LIBRARY.rglob("*.py") if "recipes" not in p.relative_to(LIBRARY).parts]
    assert library
    for path in library:
        imported = _imported_modules(path)
        assert not any(name.startswith("torchrl_mcmc.recipes") for name in imported), path
    # ... and importing it loads neither the recipes nor their plotting and Hydra.
    check = (
        "import sys, torchrl_mcmc, torchrl_mcmc.control, torchrl_mcmc.mcmc, "
        "torchrl_mcmc.modules, torchrl_mcmc.objectives\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hydra', 'matplotlib') or m.startswith('torchrl_mcmc.recipes')))"
    )
    proc = _python("-c", check, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
