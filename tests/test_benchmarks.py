"""The learning benchmark's bookkeeping: resumable grids and the aggregation arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import learning


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(learning, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(learning, "RESULTS", tmp_path / "results" / "learning")
    return tmp_path


def _fake_summary(method: str, env: str, seed: int, final: float) -> dict:
    history = [{"frames": f, "eval_return": final * f / 15_000} for f in (5_000, 10_000, 15_000)]
    return {
        "method": method,
        "env": env,
        "seed": seed,
        "final_return": final,
        "eval_history": history,
        "frames": 15_000,
        "wall_time_s": 1.0,
    }


def test_grid_skips_finished_resumes_partial_and_starts_pending(sandbox, monkeypatch) -> None:
    finished = learning.result_path("Q", "sac", "Pendulum-v1", 0)
    finished.parent.mkdir(parents=True)
    finished.write_text("{}")
    partial = learning.run_dir("Q", "sac", "Pendulum-v1", 1)
    partial.mkdir(parents=True)
    (partial / "latest_checkpoint.txt").write_text("frames_000000005000.pt")
    calls = []

    def fake_call(cmd, **kwargs):
        calls.append(cmd)
        directory = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        directory.mkdir(parents=True, exist_ok=True)
        seed = int(next(a for a in cmd if a.startswith("seed=")).split("=")[1])
        (directory / "summary.json").write_text(
            json.dumps(_fake_summary("sac", "Pendulum-v1", seed, -150.0))
        )
        (directory / "config.yaml").write_text("seed: 0\n")
        return 0

    monkeypatch.setattr(learning.subprocess, "call", fake_call)
    args = learning.argparse.Namespace(
        tier="Q", methods=["sac"], envs=None, seeds=[0, 1, 2], overrides=[]
    )
    assert learning.run_grid(args) == 0
    assert len(calls) == 2  # seed 0 was finished: not redone
    assert f"resume={partial}" in calls[0]  # seed 1 continues from its checkpoint
    assert not any(a.startswith("resume=") for a in calls[1])  # seed 2 starts fresh
    assert learning.result_path("Q", "sac", "Pendulum-v1", 2).exists()


def test_aggregate_matches_hand_computed_statistics(sandbox) -> None:
    finals = {"sac": [-200.0, -180.0, -160.0, -150.0, -400.0], "hmc_sac": [-150.0] * 5}
    for method, scores in finals.items():
        for seed, score in enumerate(scores):
            path = learning.result_path("Q", method, "Pendulum-v1", seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_fake_summary(method, "Pendulum-v1", seed, score)))
    out = learning.aggregate("Q")
    sac = out["results"]["Pendulum-v1"]["sac"]
    assert sac["mean"] == pytest.approx(np.mean(finals["sac"]))
    assert sac["std"] == pytest.approx(np.std(finals["sac"], ddof=1))
    # IQM of 5 runs: the middle 50% of the mass, i.e. scipy's trimmed mean at 25%.
    assert sac["iqm"] == pytest.approx(-180.0, abs=1e-6)
    low, high = sac["iqm_ci95"]
    assert low <= sac["iqm"] <= high
    hmc = out["results"]["Pendulum-v1"]["hmc_sac"]
    assert hmc["iqm"] == pytest.approx(-150.0) and hmc["iqm_ci95"] == pytest.approx([-150, -150])
    assert len(out["pending"]) == 10  # td3 and ld_td3 never ran
    assert (learning.RESULTS.parent / "learning_Q_Pendulum-v1.png").stat().st_size > 1000
