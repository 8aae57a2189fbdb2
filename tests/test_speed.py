"""The speed benchmark times the scripts' own updates and checks its result; the GPU check's CPU
dry run writes a complete result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmarks import update_speed
from torchrl_mcmc.recipes import HMCSAC, LDTD3, SAC, TD3, BestOfNSAC

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
#: The protocol at toy sizes: the same scripts and overrides, cheap networks and batches.
TINY = {**update_speed.PROTOCOL, "network.hidden": [16, 16], "replay.batch_size": 8}


def _batches(count: int = 2) -> list:
    return update_speed.make_batches(count, 8, CPU, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "num_steps", "script_class"),
    [
        ("sac", None, SAC),
        ("exact_alternating", 3, HMCSAC),
        ("entropy_fast", 3, HMCSAC),
        ("bon_sac", 3, BestOfNSAC),
        ("td3", None, TD3),
        ("ld_td3", 3, LDTD3),
    ],
)
def test_each_variant_times_its_scripts_own_update(name, num_steps, script_class) -> None:
    variant = update_speed.build_variant(name, num_steps, CPU, TINY)
    assert type(variant.method) is script_class
    # The timed callable is the script's own method, not one the benchmark wrote.
    assert variant.update.__func__ is script_class.update
    assert variant.cfg.env.name == "HalfCheetah-v4"
    assert list(variant.cfg.network.hidden) == [16, 16]


def test_configurations_reach_the_method_and_k_its_chain() -> None:
    fast = update_speed.build_variant("entropy_fast", 3, CPU, TINY).method
    assert fast.actor.prior_kind == "uniform" and fast.actor.potential_critic == "first"
    assert fast.loss.update_mode == "joint" and fast.loss.next_action == "base"
    assert fast.actor.flow.num_steps == 3
    exact = update_speed.build_variant("exact_alternating", 5, CPU, TINY).method
    assert exact.actor.prior_kind == "policy" and exact.actor.potential_critic == "min"
    assert exact.loss.update_mode == "alternating" and exact.loss.next_action == "chain"
    assert update_speed.build_variant("h_every_2", 1, CPU, TINY).method.h_update_interval == 2
    assert update_speed.build_variant("bon_sac", 3, CPU, TINY).method.policy.num_samples == 4
    assert update_speed.build_variant("ld_td3", 3, CPU, TINY).method.actor.flow.num_layers == 3


def test_the_rounds_call_each_update_as_often_as_timed(monkeypatch) -> None:
    calls: list[str] = []
    original = HMCSAC.update

    def counted(self, batch):
        calls.append("hmc")
        return original(self, batch)

    monkeypatch.setattr(HMCSAC, "update", counted)
    variants = [
        update_speed.build_variant("sac", None, CPU, TINY),
        update_speed.build_variant("entropy", 1, CPU, TINY),
    ]
    batches = _batches()
    stats, failed = update_speed.time_updates(variants, batches, 6, 1, 3, CPU)
    assert not failed
    # Warm-up visits every batch once at least, then 6 timed updates.
    assert len(calls) == len(batches) + 6
    assert stats["entropy@K=1"]["n"] == 6 and len(stats["sac"]["_round_means"]) == 2
    assert update_speed.paired_ratio(stats, "entropy@K=1", "sac") > 0


def test_the_freeze_fix_row_runs_the_chain_as_before_the_fix() -> None:
    """Before the fix, the frozen group's swapped-in tensors required grad (so the backward
    computed gradients for them); the row that measures it must reproduce that."""

    def frozen_leaves_requiring_grad(name: str) -> list[bool]:
        loss = update_speed.build_variant(name, 2, CPU, TINY).method.loss
        seen: list[bool] = []
        guarded = loss._guarded_sample

        def spy(tensordict, critic):
            seen.extend(p.requires_grad for p in loss.actor_network.parameters())
            return guarded(tensordict, critic)

        loss._guarded_sample = spy
        loss.flow_loss(_batches(1)[0])  # the h pass: theta frozen
        return seen

    assert frozen_leaves_requiring_grad("exact_alternating_before_freeze_fix")
    assert all(frozen_leaves_requiring_grad("exact_alternating_before_freeze_fix"))
    assert not any(frozen_leaves_requiring_grad("exact_alternating"))


def _result(ratio_k5: float, with_bound: bool) -> dict:
    row = {"median_ms": 1.0, "mean_ms": 1.0, "n": 200, "ratio": ratio_k5}
    summary = {key: 0.5 for key in update_speed.SUMMARY_KEYS}
    summary.update(default="entropy_lcb", update_ratio_k5=ratio_k5)
    if with_bound:
        summary["bound"] = "GEMMs"
    return {
        **{k: "x" for k in ("command", "git_commit", "date", "versions", "device", "cpu")},
        "threads": 1,
        "status": "complete",
        "config": {"compile_collection": True},
        "summary": summary,
        "update": {
            "configurations": {
                "sac": {"baseline": None, "K": {"-": {**row, "ratio": None}}},
                "entropy_lcb": {"baseline": "sac", "K": {"5": row}},
            }
        },
    }


def test_the_result_check_names_what_is_missing() -> None:
    assert update_speed.check_result(_result(1.8, with_bound=False)) == []
    assert update_speed.check_result(_result(2.4, with_bound=True)) == []
    assert any("bound" in p for p in update_speed.check_result(_result(2.4, with_bound=False)))
    broken = _result(1.8, with_bound=False)
    del broken["summary"]["collection_ratio"]
    broken["status"] = "running"
    problems = update_speed.check_result(broken)
    assert any("collection_ratio" in p for p in problems)
    assert any("status" in p for p in problems)


def test_the_summary_names_the_bound_above_two() -> None:
    def update(ratio: float) -> dict:
        return {"configurations": {"entropy_lcb": {"K": {"5": {"ratio": ratio}}}}}

    phases = {"critic_loss": 5.0, "actor_loss (chain and objective)": 20.0}
    gemm = {"calls_per_update": 100.0, "self_cpu_ms_per_update": 10.0}
    profile = {
        "sac": {"update_ms": 15.0, "phases_ms": phases, "gemm": gemm},
        "entropy_lcb@K=5": {"update_ms": 40.0, "phases_ms": phases, "gemm": gemm},
    }
    assert "bound" not in update_speed._summary(update(1.9), None, profile)
    summary = update_speed._summary(update(2.5), None, profile)
    assert "actor_loss (chain and objective) 20.0 ms" in summary["bound"]
    assert summary["default_settings"]["hmc.prior"] == "uniform"
    assert summary["default_settings"]["hmc.potential_critic"] == "mean_std"
    assert [c["name"] for c in summary["candidates"]] == ["entropy_lcb"]


# ------------------------------------------------------------------ the GPU check
def test_the_device_check_dry_run_writes_a_complete_result(tmp_path: Path) -> None:
    output = tmp_path / "update_speed_dry.json"
    env = {**os.environ, "DRY_RUN": "1", "OUTPUT": str(output), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # above the dry run's stage limits together (120 + 300 + 60 s)
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "device check: passed" in done.stdout
    data = json.loads(output.read_text())
    assert update_speed.check_result(data) == []
    assert set(update_speed.SUMMARY_KEYS) <= set(data["summary"])
    configurations = data["update"]["configurations"]
    assert configurations["entropy_lcb"]["method"] == "torchrl_mcmc.recipes.methods.hmc_sac.HMCSAC"
    assert configurations["ld_td3"]["baseline"] == "td3"
    assert data["device"] == "cpu" and data["threads"] == 1


def test_one_provenance_helper_for_every_result() -> None:
    from benchmarks import mechanism
    from torchrl_mcmc.recipes.provenance import provenance

    assert mechanism.provenance is provenance is update_speed.provenance
    record = provenance(command=["python", "x.py", "--flag"], device="cpu")
    assert record["command"] == "python x.py --flag"
    assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    assert {"torch", "torchrl", "tensordict", "gymnasium", "mujoco"} <= set(record["versions"])
    assert record["device"] == "cpu" and record["threads"] == torch.get_num_threads()
    assert record["cpu"] and record["date"]


@pytest.mark.parametrize("name", sorted(update_speed.SCREENING_VARIANTS))
def test_each_timed_configuration_is_the_screening_variant_it_names(name) -> None:
    # The cost in docs/results.md is read beside a learning curve under the variant's name:
    # both must compose to the same chain and loss options.
    from benchmarks import learning
    from torchrl_mcmc.recipes import compose_config

    script, overrides = learning.VARIANTS[update_speed.SCREENING_VARIANTS[name]]
    screened = compose_config(script, list(overrides))
    timed = update_speed.compose_config("hmc_sac", update_speed.HMC_CONFIGURATIONS[name])
    assert script == "hmc_sac"
    assert timed.hmc == screened.hmc
    # The settings a result file records are the composed values, typed ("2.0" would not be).
    for key, value in update_speed.HMC_CONFIGURATIONS[name].items():
        assert OmegaConf.select(timed, key) == value, key
