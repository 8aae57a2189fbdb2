"""The learning benchmark's bookkeeping: resumable grids and the aggregation arithmetic."""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import replace
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

    def fake_call(cmd, log, stop):
        calls.append(cmd)
        directory = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        directory.mkdir(parents=True, exist_ok=True)
        seed = int(next(a for a in cmd if a.startswith("seed=")).split("=")[1])
        (directory / "summary.json").write_text(
            json.dumps(_fake_summary("sac", "Pendulum-v1", seed, -150.0))
        )
        (directory / "config.yaml").write_text("seed: 0\n")
        return 0, None

    monkeypatch.setattr(learning, "_run_child", fake_call)
    args = learning.argparse.Namespace(
        tier="Q", methods=["sac"], envs=None, seeds=[0, 1, 2], overrides=[]
    )
    assert learning.run_grid(args) == 0
    assert len(calls) == 2  # seed 0 was finished: not redone
    assert f"resume={partial}" in calls[0]  # seed 1 continues from its checkpoint
    assert not any(a.startswith("resume=") for a in calls[1])  # seed 2 starts fresh
    assert learning.result_path("Q", "sac", "Pendulum-v1", 2).exists()


@pytest.mark.parametrize(
    ("exit_code", "says"),
    [(128 + 15, "checkpointed"), (-9, "stopped before writing a checkpoint")],
)
def test_a_stopped_grid_says_whether_the_run_checkpointed(
    sandbox, monkeypatch, caplog, exit_code, says
) -> None:
    # 128 + N is the run's own exit after writing its checkpoint; a run killed by a second,
    # direct signal exits -N and left none: the grid must not claim it did.
    calls = []

    def fake_call(cmd, log, stop):
        calls.append(cmd)
        return exit_code, signal.SIGTERM

    monkeypatch.setattr(learning, "_run_child", fake_call)
    args = learning.argparse.Namespace(
        tier="Q", methods=["sac"], envs=None, seeds=[0, 1], overrides=[]
    )
    with caplog.at_level(logging.WARNING, logger="benchmarks.learning"):
        assert learning.run_grid(args) == 128 + signal.SIGTERM
    assert len(calls) == 1  # the grid stops after the stopped run
    (record,) = [r for r in caplog.records if "stopped by SIGTERM" in r.getMessage()]
    assert record.getMessage().endswith(
        f"{says} (exit {exit_code}); run the grid again to continue"
    )


def test_a_signal_between_two_runs_stops_the_grid_before_the_next(
    sandbox, monkeypatch, caplog
) -> None:
    # No run is in progress while the grid copies a finished one's results: the signal must
    # neither kill the grid there nor let it start the next run.
    calls = []

    def fake_call(cmd, log, stop):
        calls.append(cmd)
        directory = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "summary.json").write_text(
            json.dumps(_fake_summary("sac", "Pendulum-v1", 0, -150.0))
        )
        (directory / "config.yaml").write_text("seed: 0\n")
        return 0, None

    collect = learning._collect

    def collect_then_signal(*args) -> None:
        collect(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(learning, "_run_child", fake_call)
    monkeypatch.setattr(learning, "_collect", collect_then_signal)
    args = learning.argparse.Namespace(
        tier="Q", methods=["sac"], envs=None, seeds=[0, 1], overrides=[]
    )
    handler = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING, logger="benchmarks.learning"):
        assert learning.run_grid(args) == 128 + signal.SIGTERM
    assert len(calls) == 1
    assert learning.result_path("Q", "sac", "Pendulum-v1", 0).exists()
    assert "stopped by SIGTERM before sac Pendulum-v1 seed 1" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is handler


def test_aggregate_matches_hand_computed_statistics(sandbox) -> None:
    finals = {"sac": [-200.0, -180.0, -160.0, -150.0, -400.0], "hmc_sac_ent": [-150.0] * 5}
    for method, scores in finals.items():
        for seed, score in enumerate(scores):
            path = learning.result_path("Q", method, "Pendulum-v1", seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            summary = _fake_summary(method, "Pendulum-v1", seed, score)
            if method == "sac" and seed == 1:
                summary["diagnostics"] = {"beta": {"last_quarter_mean": 0.5}}
            path.write_text(json.dumps(summary))
    out = learning.aggregate("Q")
    sac = out["results"]["Pendulum-v1"]["sac"]
    assert sac["mean"] == pytest.approx(np.mean(finals["sac"]))
    assert sac["std"] == pytest.approx(np.std(finals["sac"], ddof=1))
    # IQM of 5 runs: the middle 50% of the mass, i.e. scipy's trimmed mean at 25%.
    assert sac["iqm"] == pytest.approx(-180.0, abs=1e-6)
    low, high = sac["iqm_ci95"]
    assert low <= sac["iqm"] <= high
    # Area under the curve: the mean of the evaluations (final * (1/3, 2/3, 1) here).
    assert sac["auc_scores"] == pytest.approx([f * 2 / 3 for f in finals["sac"]])
    assert sac["auc_iqm"] == pytest.approx(-120.0, abs=1e-6)
    assert sac["diagnostics_last_quarter_per_seed"] == {"beta": [None, 0.5, None, None, None]}
    assert sac["diagnostics_last_quarter_mean"] == {"beta": 0.5}  # over the runs that have it
    hmc = out["results"]["Pendulum-v1"]["hmc_sac_ent"]
    assert hmc["iqm"] == pytest.approx(-150.0) and hmc["iqm_ci95"] == pytest.approx([-150, -150])
    assert out["iqm_ratios"] == {}  # negative returns: no ratio is read
    tier = learning.TIERS["Q"]  # every seed of the methods other than sac and hmc_sac_ent
    assert len(out["pending"]) == (len(tier.methods) - 2) * len(tier.seeds)
    # A run counts under the variant its place names, whatever ``method`` it recorded (LD-TD3's
    # PID runs made while the PID was the script's default).
    assert (learning.RESULTS.parent / "learning_Q_Pendulum-v1.png").stat().st_size > 1000
    path = learning.result_path("QL", "ld_td3_pid", "Pendulum-v1", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_fake_summary("ld_td3", "Pendulum-v1", 0, -999.0)))
    out = learning.aggregate("QL")
    assert out["results"]["Pendulum-v1"]["ld_td3_pid"]["final_scores"] == [-999.0]
    assert "ld_td3" not in out["results"]["Pendulum-v1"]


def test_seed_tables_show_each_runs_curve_and_last_quarter_diagnostics(sandbox) -> None:
    # Tier MA evaluates every 10k frames over 100k: 10 columns, all of them shown.
    for method, seed, final in (("sac", 1, 800.0), ("sac", 0, 700.0), ("hmc_sac", 0, 1400.0)):
        summary = _fake_summary(method, "Ant-v4", seed, final)
        summary["eval_history"] = [
            {"frames": f, "eval_return": final * f / 100_000}
            for f in range(10_000, 100_001, 10_000)
        ]
        summary["wall_time_s"] = 5400.0
        if method == "hmc_sac":
            summary["diagnostics"] = {
                "step_size": {"last_quarter_mean": 0.0257, "last": 1.0},
                "alpha": {"last_quarter_mean": 0.028, "last": 1.0},
            }
        path = learning.result_path("MA", method, "Ant-v4", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary))
    lines = learning.seed_tables("MA").splitlines()
    assert lines[0] == "### Ant-v4"
    assert lines[2] == (
        "| run | 10k | 20k | 30k | 40k | 50k | 60k | 70k | 80k | 90k | 100k | final score "
        "| wall time |"
    )
    # Grid order of the methods (sac first), seeds in order within each.
    assert lines[4].startswith("| `sac`, seed 0 | 70 | 140 | 210 |")
    assert lines[4].endswith("| 630 | 700 | 700 | 90 min |")
    assert lines[5].startswith("| `sac`, seed 1 | 80 |")
    assert lines[6].startswith("| `hmc_sac`, seed 0 | 140 |")
    # Only the diagnostics some run logged, their last-quarter means; "-" where a run has none.
    assert lines[8] == "| run | step size | alpha |"
    assert lines[10] == "| `sac`, seed 0 | - | - |"
    assert lines[12] == "| `hmc_sac`, seed 0 | 0.0257 | 0.028 |"
    # A long curve (tier Q: every 1000 frames to 15k) shows at most 10, the last one included.
    summary = _fake_summary("sac", "Pendulum-v1", 0, -150.0)
    summary["eval_history"] = [
        {"frames": f, "eval_return": -f / 100} for f in range(1000, 15_001, 1000)
    ]
    path = learning.result_path("Q", "sac", "Pendulum-v1", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    header = learning.seed_tables("Q").splitlines()[2]
    assert header == "| run | 1k | 3k | 5k | 7k | 9k | 11k | 13k | 15k | final score | wall time |"


def test_tiers_keep_their_runs_and_variants_name_their_results(sandbox) -> None:
    # The 5k-spacing ablations keep their own runs: never mixed with tier Q's.
    assert learning.result_path("QA", "sac", "Pendulum-v1", 0).parts[-4] == "QA"
    assert "eval.interval_frames=5000" in learning.command("QA", "sac", "Pendulum-v1", 0, [])
    assert "eval.interval_frames=1000" in learning.command("Q", "sac", "Pendulum-v1", 0, [])
    # One thread per run unless the caller says otherwise.
    assert "threads=1" in learning.command("Q", "sac", "Pendulum-v1", 0, [])
    assert learning.command("Q", "sac", "Pendulum-v1", 0, ["threads=4"]).count("threads=4") == 1
    assert not any(
        a == "threads=1" for a in learning.command("Q", "sac", "Pendulum-v1", 0, ["threads=4"])
    )
    # A checkpoint at every evaluation, unless the caller sets its own interval.
    assert "checkpoint.interval_frames=10000" in learning.command("M", "sac", "Hopper-v4", 0, [])
    custom = learning.command("M", "sac", "Hopper-v4", 0, ["checkpoint.interval_frames=5"])
    assert [a for a in custom if a.startswith("checkpoint.")] == ["checkpoint.interval_frames=5"]
    variant = learning.result_path("QA", "hmc_sac_k0", "Pendulum-v1", 0)
    assert variant.parts[-4:] == ("QA", "hmc_sac_k0", "Pendulum-v1", "seed0.json")
    # A variant runs its script with its overrides and the variant's own method name.
    cmd = learning.command("QA", "hmc_sac_fixedbeta", "Pendulum-v1", 2, [])
    assert cmd[1] == "examples/hmc_sac.py"
    assert "pid.enabled=false" in cmd and "method=hmc_sac_fixedbeta" in cmd
    assert "preset=quick" in cmd and "seed=2" in cmd
    cmd = learning.command("Q", "hmc_sac_ent", "Pendulum-v1", 0, [])
    assert "hmc.prior=uniform" in cmd and "method=hmc_sac_ent" in cmd
    assert learning.command("Q", "bon_sac", "Pendulum-v1", 0, [])[1] == "examples/bon_sac.py"
    # Aggregation reads each tier's own results.
    for tier, method, final in (("Q", "hmc_sac_ent", -300.0), ("QA", "hmc_sac_k0", -900.0)):
        path = learning.result_path(tier, method, "Pendulum-v1", 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_fake_summary(method, "Pendulum-v1", 0, final)))
    assert learning.load_results("Q").keys() == {("Pendulum-v1", "hmc_sac_ent")}
    assert learning.load_results("QA").keys() == {("Pendulum-v1", "hmc_sac_k0")}


def test_iqm_ratio_is_exact_for_scaled_scores_and_absent_for_negative_baselines() -> None:
    base = np.array([1000.0, 2000.0, 3000.0])
    ratio, low, high = learning.iqm_ratio_with_ci(1.2 * base, base)
    assert ratio == pytest.approx(1.2)  # IQM of 3 runs is their mean
    assert low < 1.2 < high  # the seeds are resampled independently: the CI has width
    constant = np.full(5, 500.0)
    assert learning.iqm_ratio_with_ci(1.5 * constant, constant) == pytest.approx((1.5, 1.5, 1.5))
    # IQM of [100, 200, 300, 400, 10000]: the middle 50% (200, 300, 400 at 25% trim), i.e. 300.
    outlier = np.array([100.0, 200.0, 300.0, 400.0, 10_000.0])
    assert learning.iqm_ratio_with_ci(outlier, np.full(5, 300.0))[0] == pytest.approx(1.0)
    assert learning.iqm_ratio_with_ci(base, -base) is None  # Pendulum-like returns: no ratio


def test_a_chain_is_read_against_its_baseline_and_its_best_of_n_control(sandbox) -> None:
    finals = {"sac": 1000.0, "bon_sac": 1250.0, "hmc_sac_ent_fast": 1500.0}
    for method, score in finals.items():
        for seed in (0, 1):
            path = learning.result_path("S", method, "Hopper-v4", seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_fake_summary(method, "Hopper-v4", seed, score)))
    ratios = learning.aggregate("S")["iqm_ratios"]["Hopper-v4"]
    assert set(ratios) == {
        "hmc_sac_ent_fast / sac",
        "hmc_sac_ent_fast / bon_sac",
        "bon_sac / sac",
    }
    assert ratios["hmc_sac_ent_fast / sac"]["iqm_ratio"] == pytest.approx(1.5)
    assert ratios["hmc_sac_ent_fast / bon_sac"]["iqm_ratio"] == pytest.approx(1.2)
    assert ratios["hmc_sac_ent_fast / bon_sac"]["ci95"] == pytest.approx([1.2, 1.2])
    assert ratios["bon_sac / sac"]["seeds"] == [2, 2]


def test_a_comparison_tier_reads_the_other_tiers_runs_up_to_its_own_frames(sandbox) -> None:
    # Tier MB (50k frames) compares its runs with tier M's SAC (100k) at the same evaluations.
    evals = [-100.0, 200.0, 900.0, 2000.0, 3000.0, 3500.0, 4000.0, 4400.0, 4600.0, 4800.0]
    summary = {
        "method": "sac",
        "env": "HalfCheetah-v4",
        "seed": 0,
        "final_return": float(np.mean(evals[-3:])),
        "eval_history": [
            {"frames": 10_000 * (i + 1), "eval_return": r} for i, r in enumerate(evals)
        ],
        "frames": 100_000,
        "wall_time_s": 4000.0,
    }
    path = learning.result_path("M", "sac", "HalfCheetah-v4", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    runs = learning.load_results("MB")[("HalfCheetah-v4", "sac (M)")]
    assert [h["frames"] for h in runs[0]["eval_history"]] == [10_000 * i for i in range(1, 6)]
    out = learning.aggregate("MB")["results"]["HalfCheetah-v4"]["sac (M)"]
    assert out["final_scores"] == pytest.approx([(900.0 + 2000.0 + 3000.0) / 3])
    assert out["auc_scores"] == pytest.approx([np.mean(evals[:5])])
    assert out["frames"] == [50_000]
    # The comparison is read, never run: MB's grid holds its own method only.
    assert {m for m, _, _ in learning._grid("MB", None, None, None)} == {"sac_fpb50"}
    # Tier M's own aggregate is untouched by the cut.
    assert learning.load_results("M")[("HalfCheetah-v4", "sac")][0]["frames"] == 100_000


def test_a_tier_of_more_seeds_pools_them_with_the_other_tiers_runs(sandbox, monkeypatch) -> None:
    # Tier MS runs SAC on Hopper seeds 3 and 4; tier M has seeds 0-2 of the same protocol.
    def write(tier: str, seed: int, last: float) -> None:
        evals = [100.0 * (i + 1) for i in range(9)] + [last]
        path = learning.result_path(tier, "sac", "Hopper-v4", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "method": "sac",
                    "env": "Hopper-v4",
                    "seed": seed,
                    "final_return": float(np.mean(evals[-3:])),
                    "eval_history": [
                        {"frames": 10_000 * (i + 1), "eval_return": r} for i, r in enumerate(evals)
                    ],
                    "frames": 100_000,
                    "wall_time_s": 1000.0 * (seed + 1),
                }
            )
        )

    for tier, seed, last in (("M", 0, 500.0), ("M", 1, 800.0), ("MS", 3, 2000.0)):
        write(tier, seed, last)
    out = learning.aggregate("MS")["results"]["Hopper-v4"]
    assert set(out) == {"sac", "sac (M)", "sac (MS + M)"}
    pooled = out["sac (MS + M)"]
    assert pooled["seeds"] == [0, 1, 3]
    assert pooled["last_eval_mean"] == pytest.approx((500.0 + 800.0 + 2000.0) / 3)
    assert pooled["last_eval_std"] == pytest.approx(np.std([500.0, 800.0, 2000.0], ddof=1))
    assert pooled["final_scores"] == pytest.approx(
        [(800.0 + 900.0 + last) / 3 for last in (500.0, 800.0, 2000.0)]
    )
    # At the same frame count nothing is cut: the other tier's wall times stand.
    assert pooled["wall_time_s"] == [1000.0, 2000.0, 4000.0]
    # Overlapping seeds are never pooled (a seed would count twice).
    monkeypatch.setitem(learning.TIERS, "MS", replace(learning.TIERS["MS"], seeds=(1, 3)))
    write("MS", 1, 700.0)
    assert "sac (MS + M)" not in learning.aggregate("MS")["results"]["Hopper-v4"]


def test_a_tier_reads_its_methods_against_the_baseline_pooled_over_more_seeds(sandbox) -> None:
    # Tier M reads tier MS's SAC seeds, and MS reads M's: neither recurses into the other.
    def write(tier: str, method: str, seed: int, final: float) -> None:
        path = learning.result_path(tier, method, "Hopper-v4", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        history = [{"frames": 10_000 * (i + 1), "eval_return": final} for i in range(10)]
        path.write_text(
            json.dumps(
                {
                    "method": method,
                    "env": "Hopper-v4",
                    "seed": seed,
                    "final_return": final,
                    "eval_history": history,
                    "frames": 100_000,
                    "wall_time_s": 1000.0,
                }
            )
        )

    for tier, method, seed, final in (
        ("M", "sac", 0, 400.0),
        ("M", "sac", 1, 600.0),
        ("MS", "sac", 3, 1400.0),
        ("M", "hmc_sac", 0, 900.0),
        ("M", "hmc_sac", 1, 1500.0),
    ):
        write(tier, method, seed, final)
    out = learning.aggregate("M")
    assert set(out["results"]["Hopper-v4"]) == {"sac", "hmc_sac", "sac (MS)", "sac (M + MS)"}
    ratios = out["iqm_ratios"]["Hopper-v4"]
    # The IQM of two or three runs is their mean (nothing is trimmed).
    assert ratios["hmc_sac / sac"]["iqm_ratio"] == pytest.approx(1200.0 / 500.0)
    pooled = ratios["hmc_sac / sac (M + MS)"]
    assert pooled["iqm_ratio"] == pytest.approx(1200.0 / 800.0)
    assert pooled["seeds"] == [2, 3]
    # The baseline is never divided by itself or by its own pooled row.
    assert not [name for name in ratios if name.startswith("sac")]
    assert set(learning.aggregate("MS")["results"]["Hopper-v4"]) == {
        "sac",
        "sac (M)",
        "sac (MS + M)",
    }


def test_a_variant_tier_reads_its_runs_against_the_baseline_and_control_it_reads(
    sandbox,
) -> None:
    # Tier MP runs one variant and reads SAC, best-of-N and the default from tier M.
    for tier, method, seed, final in (
        ("M", "sac", 0, 4000.0),
        ("M", "sac", 1, 6000.0),
        ("M", "bon_sac", 1, 4000.0),
        ("M", "hmc_sac", 1, 1000.0),
        ("MP", "hmc_sac_ent_lcb", 1, 3000.0),
    ):
        path = learning.result_path(tier, method, "HalfCheetah-v4", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_fake_summary(method, "HalfCheetah-v4", seed, final)))
    out = learning.aggregate("MP")
    assert set(out["results"]["HalfCheetah-v4"]) == {
        "hmc_sac_ent_lcb",
        "sac (M)",
        "bon_sac (M)",
        "hmc_sac (M)",
    }
    ratios = out["iqm_ratios"]["HalfCheetah-v4"]
    # Read rows are compared with, never read against anything themselves.
    assert set(ratios) == {"hmc_sac_ent_lcb / sac (M)", "hmc_sac_ent_lcb / bon_sac (M)"}
    assert ratios["hmc_sac_ent_lcb / sac (M)"]["iqm_ratio"] == pytest.approx(3000.0 / 5000.0)
    assert ratios["hmc_sac_ent_lcb / sac (M)"]["seeds"] == [1, 2]
    assert ratios["hmc_sac_ent_lcb / bon_sac (M)"]["iqm_ratio"] == pytest.approx(0.75)
    # The stalled seed runs first.
    assert next(learning._grid("MP", None, None, None)) == ("hmc_sac_ent_lcb", "HalfCheetah-v4", 1)


# ------------------------------------------------------------------ mechanism benchmark
def test_mechanism_log_partition_and_posterior_regret_match_monte_carlo() -> None:
    import torch

    from benchmarks import mechanism

    torch.manual_seed(0)
    state = torch.tensor([[0.3, -0.7], [0.9, 0.1]])
    beta = 0.5  # broad enough for plain Monte Carlo from the prior to be accurate
    log_z, regret = mechanism.posterior_moments(state, beta)
    u = torch.randn(400_000, 1, 2, dtype=torch.float64)
    q = -mechanism.CURVATURE * (u.tanh() - mechanism.optimum(state.double())).pow(2).sum(-1)
    weights = (q / beta).exp()  # [samples, states]
    mc_log_z = weights.mean(0).log()
    mc_regret = (weights * -q).mean(0) / weights.mean(0)
    torch.testing.assert_close(log_z.double(), mc_log_z, atol=5e-3, rtol=0)
    torch.testing.assert_close(regret.double(), mc_regret, atol=5e-3, rtol=0)
    # Jensen: log Z >= E_prior[Q / beta], with the gap a sharp posterior opens.
    assert (log_z.double() > (q / beta).mean(0)).all()


def test_mechanism_langevin_optimum_beats_a_dense_action_grid() -> None:
    import torch

    from benchmarks import mechanism

    state = torch.tensor([[0.3, -0.7], [0.02, 0.01], [-0.5, 0.5]])  # the middle one shrinks to 0
    beta = 0.2
    best, value = mechanism.langevin_optimum(state, beta)
    grid = torch.linspace(-1, 1, 801)
    actions = torch.cartesian_prod(grid, grid)  # [g, 2]
    target = mechanism.optimum(state).unsqueeze(1)  # [n, 1, 2]
    objective = -mechanism.CURVATURE * (actions - target).pow(2).sum(-1) - beta * actions.norm(
        dim=-1
    )
    grid_best = objective.max(-1)
    assert (value >= grid_best.values - 1e-6).all()  # never beaten by the grid
    torch.testing.assert_close(value, grid_best.values, atol=1e-4, rtol=0)
    torch.testing.assert_close(best, actions[grid_best.indices], atol=5e-3, rtol=0)
    assert best[1].abs().max() == 0  # |a*| < beta / 2C: the prior action itself


def test_mechanism_grid_writes_results_and_resumes(tmp_path: Path) -> None:
    from benchmarks import mechanism

    output = tmp_path / "mechanism.json"
    common = ["--iterations", "3", "--batch-size", "16", "--eval-states", "8", "--output"]
    assert mechanism.main(["--num-steps", "0", "1", "--seeds", "0", *common, str(output)]) == 0
    first = json.loads(output.read_text())
    configs = [r["config"] for r in first["table"]]
    assert configs == ["hmc K=0", "hmc K=1 gated", "hmc K=1 plain", "langevin K=0", "langevin K=1"]
    for row in first["table"]:
        assert row["gap"] > -0.05  # the known optimum bounds every estimate (up to MC noise)
        assert row["regret"] >= row["regret_posterior"] - 0.05
    assert output.with_suffix(".png").exists()
    # Rerun with one more seed: the finished seed-0 runs are kept as they were.
    assert mechanism.main(["--num-steps", "0", "1", "--seeds", "0", "1", *common, str(output)]) == 0
    second = json.loads(output.read_text())
    assert second["runs"][: len(first["runs"])] == first["runs"]
    assert len(second["runs"]) == 2 * len(first["runs"])


def test_a_stop_request_reaches_the_run_once_and_stops_the_grid(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import threading

    # A stand-in run that, like the example scripts, checkpoints on the first signal.
    script = tmp_path / "run.py"
    script.write_text(
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    open(sys.argv[1], 'a').write(f'checkpoint on {signum}\\n')\n"
        "    sys.exit(128 + signum)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    marker = tmp_path / "marker.txt"
    with open(tmp_path / "log.txt", "w") as log:
        timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.start()
        with learning._GridStop() as stop:
            code, stopped = learning._run_child(
                [sys.executable, str(script), str(marker)], log, stop
            )
    assert stopped == signal.SIGTERM
    assert code == 128 + signal.SIGTERM
    assert marker.read_text() == f"checkpoint on {int(signal.SIGTERM)}\n"  # exactly once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the grid's handler is gone


def test_chain_gain_of_a_flow_with_no_layers_is_zero_for_critic_and_environment(
    tmp_path: Path,
) -> None:
    """Known answer: with ``flow.num_layers=0`` the refined action is the policy's, so both the
    critic's gain and the true (rolled-out) gain are exactly 0 at every state, and so are the
    null move's (a move of the chain's size, zero)."""
    from benchmarks import chain_gain
    from torchrl_mcmc.recipes import LDTD3, compose_config, train

    overrides = ["preset=smoke", "env=Pendulum-v1", "flow.num_layers=0", f"run_root={tmp_path}"]
    assert train(compose_config("ld_td3", overrides), LDTD3).exit_code == 0
    (run_dir,) = (tmp_path / "ld_td3" / "Pendulum-v1").iterdir()
    out = tmp_path / "gain"
    assert chain_gain.main([str(run_dir), "--states", "3", "--out", str(out)]) == 0
    (result,) = out.iterdir()
    written = json.loads(result.read_text())
    rows = written["rows"]
    assert len(rows) == 3
    # The run named as it is found from any checkout: from the repository's root inside it.
    assert written["run_dir"] == str(run_dir.resolve())
    assert chain_gain._portable(chain_gain.ROOT / "runs" / "seed0") == "runs/seed0"
    assert all(r["critic_gain"] == 0.0 and r["true_gain"] == 0.0 for r in rows)
    assert all(r["null_critic_gain"] == 0.0 and r["null_true_gain"] == 0.0 for r in rows)
    # Whole episodes (10 by default) from the same initial states: the same returns, exactly.
    episodes = written["episodes"]
    assert episodes["episodes"] == 10 and len(episodes["chain_returns"]) == 10
    assert episodes["chain_returns"] == episodes["policy_alone_returns"]
    assert len(set(episodes["chain_returns"])) > 1  # ten initial states, not one ten times
    assert episodes["chain_minus_policy_alone_mean"] == 0.0
    assert episodes["chain_minus_policy_alone_ci95"] == [0.0, 0.0]


def test_chain_gain_episodes_are_compared_in_pairs() -> None:
    from benchmarks import chain_gain

    alone = np.array([100.0, 900.0, 400.0, 1600.0])
    out = chain_gain.compare_episodes(alone + 10.0, alone)
    # The returns spread by hundreds, their paired difference not at all: an exact +10.
    assert out["chain_mean"] == 760.0 and out["policy_alone_mean"] == 750.0
    assert out["chain_minus_policy_alone_mean"] == 10.0
    assert out["chain_minus_policy_alone_ci95"] == [10.0, 10.0]
    mixed = chain_gain.compare_episodes(alone + np.array([-30.0, 10.0, 20.0, 40.0]), alone)
    low, high = mixed["chain_minus_policy_alone_ci95"]
    assert mixed["chain_minus_policy_alone_mean"] == 10.0 and -30.0 <= low < 10.0 < high <= 40.0


def test_chain_gain_null_move_has_the_chains_size_per_dimension_and_random_signs() -> None:
    from benchmarks import chain_gain

    rng = np.random.default_rng(0)
    a0 = np.array([0.0, 0.2, -0.5, 0.9])
    a_k = np.array([0.1, 0.15, -0.5, 0.7])
    low, high = -np.ones(4), np.ones(4)
    moves = np.stack([chain_gain.null_action(a0, a_k, low, high, rng) for _ in range(400)])
    distance = np.abs(moves - a0)
    # Inside the bounds the distance in each dimension is the chain's, to rounding.
    np.testing.assert_allclose(distance[:, :3], np.tile([0.1, 0.05, 0.0], (400, 1)), atol=1e-12)
    # Each sign about half the time, independently of the other dimensions.
    up = moves[:, :2] > a0[:2]
    assert np.all(np.abs(up.mean(axis=0) - 0.5) < 0.1)
    assert abs(np.mean(up[:, 0] == up[:, 1]) - 0.5) < 0.1
    # At the bound the upward move is clipped: 0.9 + 0.2 gives 1.0, the downward one 0.7.
    assert set(np.round(moves[:, 3], 12)) == {0.7, 1.0}


def test_chain_gain_summary_matches_hand_computed_statistics(tmp_path: Path) -> None:
    from benchmarks import chain_gain

    true = np.array([-2.0, 1.0, 3.0, 6.0])
    rows = [
        {"critic_gain": 0.5 * g, "true_gain": g, "move": m}
        for g, m in zip(true, (0.1, 0.2, 0.3, 0.4), strict=True)
    ]
    summary = chain_gain.summarize(rows)
    assert summary["true_gain_mean"] == 2.0 and summary["true_gain_median"] == 2.0
    assert summary["fraction_true_gain_negative"] == 0.25
    assert summary["correlation"] == pytest.approx(1.0)
    assert summary["action_move_mean"] == pytest.approx(0.25)
    assert summary["true_gain_p5_p95"] == pytest.approx(np.percentile(true, [5, 95]).tolist())
    # The bootstrap interval of the mean: inside the data's range, around the mean, and about
    # +-1.96 standard errors wide (population std / sqrt(n) = 2.92 / 2).
    low, high = summary["true_gain_mean_ci95"]
    assert true.min() <= low < 2.0 < high <= true.max()
    assert high - low == pytest.approx(2 * 1.96 * true.std() / 2, rel=0.25)
    # A constant gain is known exactly.
    flat = chain_gain.summarize([{"critic_gain": 1.0, "true_gain": 3.0, "move": 0.0}] * 5)
    assert flat["true_gain_mean_ci95"] == [3.0, 3.0] and flat["correlation"] is None
    assert "chain_minus_null_mean" not in summary  # rows without the null move: no null keys
    # With the null move: its mean, and the paired difference resampled by state. The chain's
    # gains minus the null's are all 1.0, so the difference's interval is exactly [1, 1] while
    # the null's own interval is as wide as the chain's.
    with_null = [
        {**r, "null_critic_gain": 0.0, "null_true_gain": r["true_gain"] - 1.0} for r in rows
    ]
    paired = chain_gain.summarize(with_null)
    assert paired["null_true_gain_mean"] == 1.0 and paired["null_critic_gain_mean"] == 0.0
    assert paired["chain_minus_null_mean"] == 1.0 and paired["chain_minus_null_ci95"] == [1.0, 1.0]
    assert paired["null_true_gain_mean_ci95"] == pytest.approx([low - 1.0, high - 1.0])
    # --summarize rewrites a result's summary from its rows and leaves the rest.
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"method": "m", "rows": rows, "summary": {"stale": 1}}))
    assert chain_gain.main(["--summarize", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["summary"] == summary and result["method"] == "m" and result["rows"] == rows


def test_chain_gain_restores_a_mujoco_state_exactly() -> None:
    """Known answer: from a restored ``(qpos, qvel)`` the same action gives the same next
    observation and reward as from the state it was read at (the rollouts' premise)."""
    import gymnasium as gym

    from benchmarks import chain_gain

    env = gym.make("HalfCheetah-v4")
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(20):
        env.step(env.action_space.sample())
    state, action = chain_gain._state(env), env.action_space.sample()
    expected_obs, expected_reward, *_ = env.step(action)
    for _ in range(7):  # elsewhere, then back
        env.step(env.action_space.sample())
    chain_gain._restore(env, state)
    obs, reward, *_ = env.step(action)
    np.testing.assert_array_equal(obs, expected_obs)
    assert reward == expected_reward


@pytest.mark.parametrize("variant", sorted(learning.VARIANTS))
def test_every_variant_composes_into_a_valid_config_that_holds_its_overrides(variant) -> None:
    # A typo in a variant's overrides would otherwise surface only when its grid starts.
    import yaml
    from omegaconf import OmegaConf

    from torchrl_mcmc.recipes import compose_config
    from torchrl_mcmc.recipes.config_rules import config_problems

    script, overrides = learning.VARIANTS[variant]
    cfg = compose_config(script, [*overrides, f"method={variant}"])
    assert config_problems(cfg) == []
    assert cfg.method == variant
    for override in overrides:
        key, value = override.split("=", 1)
        # Hydra parses an override's value as YAML does (``2.0`` a float, ``false`` a bool).
        assert OmegaConf.select(cfg, key) == yaml.safe_load(value)


def test_every_tier_names_known_methods_and_the_ablations_only_their_own() -> None:
    scripts = {p.stem for p in (learning.ROOT / "examples").glob("*.py")}
    for tier in learning.TIERS.values():
        assert set(tier.methods) <= scripts | set(learning.VARIANTS)
    # A variant added for a later screen must not join a finished tier's grid.
    assert "hmc_sac_ent_lcb" not in learning.TIERS["QA"].methods
    assert set(learning.TIERS["QA"].methods) - {"sac", "hmc_sac"} <= set(learning.VARIANTS)
