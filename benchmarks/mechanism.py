"""Mechanism benchmark (docs/benchmarks.md §2): does the chain close the amortisation gap?

RL noise removed: a contextual bandit with a *known* critic and no critic learning.

* States ``s ~ U[-1, 1]^2``; actions ``a`` in the box ``[-1, 1]^2``.
* Critic ``Q(s, a) = -C ||a - a*(s)||^2`` with the optimum ``a*(s) = 0.8 sin(pi s)``
  (element-wise): non-linear in the state, inside the box, ``max_a Q = 0`` so the regret of an
  action is ``-Q``.
* Policies too weak to represent ``a*``: a **linear** Gaussian ``u ~ N(W s + b, diag(sp(V s +
  c)))`` for HMC, a linear deterministic ``u = W s + b`` for the Langevin flow (``a = tanh u``).
  The best linear fit of ``0.8 sin(pi x)`` on ``[-1, 1]`` leaves a residual std of 0.35 per
  dimension: a gap by construction (docs/method.md §1.4).
* Fixed prior and beta: the prior is the initial policy (``N(0, I)`` in ``u``, resp. ``a = 0``),
  never refreshed, so each objective has one known optimum:

  - HMC, objective (17) through :meth:`HMCLoss.actor_loss` / :meth:`HMCLoss.flow_loss`
    (alternating, eq. 11). Its ELBO (eq. 15, in nats, ``Q / beta`` units) is bounded by
    ``log Z(s) = log E_{u ~ prior}[exp(Q(s, tanh u) / beta)]``, which factorises over
    dimensions here and is computed by 1-D quadrature: ``log Z - ELBO >= 0`` is the
    remaining amortisation gap, exactly.
  - Langevin, objective (10) through :meth:`LangevinFlowLoss.actor_loss` /
    :meth:`LangevinFlowLoss.flow_loss`. With prior action 0, ``max_a Q - beta ||a||`` is
    reached at ``a*`` shrunk towards 0 by ``beta / (2 C)``: ``J* - J >= 0`` is the gap.

For ``K = 0, 1, 3, 5, 10``, HMC with gates on and off, and the Langevin flow, it trains 3
seeds and reports, on fixed evaluation states: expected critic value and regret (of the
chain's end and of its start), the ELBO / objective and its gap to the known optimum, and the
learned step sizes. Results are rewritten after every configuration, so an interrupted run
keeps what finished, and a rerun skips configurations already in the file (``--fresh``
starts over).

    python benchmarks/mechanism.py                     # the full grid (about 20 min, 1 core)
    python benchmarks/mechanism.py --num-steps 0 5 --seeds 0 --iterations 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import Bounded
from torchrl.modules import NormalParamExtractor, ProbabilisticActor, TanhModule, TanhNormal

from torchrl_mcmc import HMCActor, HMCLoss, LangevinFlowActor, LangevinFlowLoss
from torchrl_mcmc.mcmc import normal_log_prob, squash, standard_normal_log_prob
from torchrl_mcmc.recipes.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]

RESULT = ROOT / "benchmarks" / "results" / "mechanism.json"
logger = logging.getLogger("benchmarks.mechanism")

DIM = 2  # state and action dimension
CURVATURE = 1.0  # C in Q(s, a) = -C ||a - a*(s)||^2
AMPLITUDE = 0.8  # a*(s) = AMPLITUDE * sin(pi s)
KS = (0, 1, 3, 5, 10)


def optimum(state: Tensor) -> Tensor:
    """``a*(s)``: the critic's argmax, a non-linear function of the state."""
    return AMPLITUDE * torch.sin(math.pi * state)


class KnownCritic(nn.Module):
    """``Q(s, a) = -C ||a - a*(s)||^2``; its one parameter ``C`` is never trained."""

    def __init__(self) -> None:
        super().__init__()
        self.curvature = nn.Parameter(torch.tensor(CURVATURE))

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        return -self.curvature * (action - optimum(observation)).pow(2).sum(-1, keepdim=True)


def make_critic() -> TensorDictModule:
    return TensorDictModule(
        KnownCritic(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )


def _zero(layer: nn.Linear) -> nn.Linear:
    # The initial policy is the prior: N(0, I) in u (loc 0, biased softplus(0) = 1) or u = 0.
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


SPEC = Bounded(-1.0, 1.0, shape=(DIM,))


def make_hmc(num_steps: int, gated: bool, beta: float) -> tuple[HMCActor, HMCLoss]:
    policy = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(_zero(nn.Linear(DIM, 2 * DIM)), NormalParamExtractor()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=SPEC,
    )
    # The paper's objective (the previous policy as prior, beta fixed here): the gap it closes.
    actor = HMCActor(
        policy,
        make_critic(),
        action_spec=SPEC,
        num_steps=num_steps,
        gated=gated,
        **HMCActor.PAPER_KWARGS,
    )
    loss = HMCLoss(actor, num_qvalue_nets=1, **HMCLoss.PAPER_KWARGS)
    loss.beta = beta
    return actor, loss


def make_langevin(num_layers: int, beta: float) -> tuple[LangevinFlowActor, LangevinFlowLoss]:
    policy = TensorDictSequential(
        TensorDictModule(_zero(nn.Linear(DIM, DIM)), in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=SPEC),
    )
    actor = LangevinFlowActor(
        policy, make_critic(), state_dim=DIM, num_layers=num_layers, exploration_noise=0.0
    )
    loss = LangevinFlowLoss(actor, num_qvalue_nets=1, **LangevinFlowLoss.PAPER_KWARGS)
    loss.beta = beta
    return actor, loss


def states(count: int, generator: torch.Generator) -> TensorDict:
    observation = torch.rand(count, DIM, generator=generator) * 2 - 1
    return TensorDict({"observation": observation}, batch_size=[count])


# ------------------------------------------------------------------------ known answers
def posterior_moments(
    state: Tensor, beta: float, points: int = 4001, width: float = 8.0
) -> tuple[Tensor, Tensor]:
    """``log Z(s)`` and the exact posterior's expected regret, by 1-D quadrature.

    ``Z(s) = int N(u; 0, I) exp(Q(s, tanh u) / beta) du`` normalises the posterior
    ``p(u|s) ~ prior(u) exp(Q / beta)`` that objective (17) targets, and ``E_p[-Q]`` is the
    regret of sampling it exactly (not 0: the posterior keeps a spread of order ``beta``).
    Prior and critic factorise over dimensions, so both are sums of 1-D integrals; the
    trapezoid rule on ``[-width, width]`` with 4001 points is exact far below the Monte Carlo
    error of the ELBO estimates (the integrands are smooth with Gaussian tails).
    """
    u = torch.linspace(-width, width, points, dtype=torch.float64)
    regret = CURVATURE * (u.tanh() - optimum(state.double()).unsqueeze(-1)).pow(2)  # [n, d, u]
    log_integrand = -0.5 * u.pow(2) - 0.5 * math.log(2 * math.pi) - regret / beta
    peak = log_integrand.max(-1, keepdim=True).values
    weights = (log_integrand - peak).exp()
    integral = torch.trapezoid(weights, u, dim=-1)
    log_z = (integral.log() + peak.squeeze(-1)).sum(-1)
    expected_regret = (torch.trapezoid(weights * regret, u, dim=-1) / integral).sum(-1)
    return log_z.float(), expected_regret.float()


def langevin_optimum(state: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The maximiser of ``Q(s, a) - beta ||a||`` (prior action 0) and the maximum.

    Along ``a*``'s direction the objective is ``-C (r - |a*|)^2 - beta r``: the best action is
    ``a*`` shrunk towards 0 by ``beta / (2C)`` (to 0 when ``|a*|`` is shorter than that).
    """
    target = optimum(state)
    radius = target.norm(dim=-1, keepdim=True)
    best = target * (1 - beta / (2 * CURVATURE) / radius).clamp(min=0)
    value = -CURVATURE * (best - target).pow(2).sum(-1) - beta * best.norm(dim=-1)
    return best, value


# ------------------------------------------------------------------------ train and evaluate
def train(loss, chain_params, chain_loss, args, generator) -> float:
    """Alternating updates (eq. 11): a step on theta with h fixed, then on h with the new theta.

    ``loss.actor_loss`` moves the policy; ``chain_loss`` moves ``chain_params`` (none: K = 0).
    """
    policy_optim = torch.optim.Adam(loss.policy_parameters(), lr=args.lr)
    chain_optim = torch.optim.Adam(chain_params, lr=args.lr) if chain_params else None
    started = time.perf_counter()
    for _ in range(args.iterations):
        batch = states(args.batch_size, generator)
        value, _ = loss.actor_loss(batch)
        policy_optim.zero_grad(set_to_none=True)
        value.backward()
        policy_optim.step()
        if chain_optim is not None:
            value, _ = chain_loss(batch)
            chain_optim.zero_grad(set_to_none=True)
            value.backward()
            chain_optim.step()
    return time.perf_counter() - started


@torch.no_grad()
def evaluate_hmc(actor: HMCActor, beta: float, eval_states: TensorDict, samples: int) -> dict:
    td = eval_states.expand(samples, *eval_states.shape).reshape(-1)
    out = actor.sample(td, explore=True)
    critic = actor.critic.module
    q_end = critic(td["observation"], out.action).squeeze(-1)
    q_start = critic(td["observation"], squash(out.u0, -1.0, 1.0)).squeeze(-1)
    log_prior_end = normal_log_prob(out.uK, out.prior_loc, out.prior_scale)
    elbo = (
        q_end / beta
        + log_prior_end
        + standard_normal_log_prob(out.rhoK)
        - out.log_prob
        - standard_normal_log_prob(out.rho0)
    )
    log_z, posterior_regret = posterior_moments(eval_states["observation"], beta)
    log_z = log_z.repeat(samples)
    step = actor.flow.step_size
    return {
        "expected_q": q_end.mean().item(),
        "regret": -q_end.mean().item(),
        "regret_base": -q_start.mean().item(),
        "regret_posterior": posterior_regret.mean().item(),
        "elbo": elbo.mean().item(),
        "log_z": log_z.mean().item(),
        "gap": (log_z - elbo).mean().item(),
        "gap_stderr": (log_z - elbo).std().item() / math.sqrt(elbo.numel()),
        "step_size": step.tolist() if actor.flow.num_steps else [],
        "base_scale": out.scale.mean().item(),
        "num_divergent": int(out.divergent.sum()),
    }


@torch.no_grad()
def evaluate_langevin(actor: LangevinFlowActor, beta: float, eval_states: TensorDict) -> dict:
    out = actor.sample(eval_states)
    critic = actor.critic.module
    q_end = critic(eval_states["observation"], out.action).squeeze(-1)
    q_start = critic(eval_states["observation"], squash(out.u0, -1.0, 1.0)).squeeze(-1)
    objective = q_end - beta * (out.action - out.prior_action).norm(dim=-1)
    best_action, best = langevin_optimum(eval_states["observation"], beta)
    critic_best = critic(eval_states["observation"], best_action).squeeze(-1)
    step = actor.flow.step_size
    return {
        "expected_q": q_end.mean().item(),
        "regret": -q_end.mean().item(),
        "regret_base": -q_start.mean().item(),
        "regret_posterior": -critic_best.mean().item(),
        "objective": objective.mean().item(),
        "objective_optimum": best.mean().item(),
        "gap": (best - objective).mean().item(),
        "step_size": step.tolist() if step.numel() else [],
        "num_divergent": int(out.divergent.sum()),
    }


def run_one(kind: str, num_steps: int, gated: bool | None, seed: int, args) -> dict[str, Any]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    eval_states = states(args.eval_states, torch.Generator().manual_seed(10_000 + seed))
    if kind == "hmc":
        actor, loss = make_hmc(num_steps, bool(gated), args.beta_hmc)
    else:
        actor, loss = make_langevin(num_steps, args.beta_ld)
    loss.refresh_prior()  # the prior is the initial policy, fixed from here on
    chain = list(loss.flow_parameters()) if num_steps else []
    seconds = train(loss, chain, loss.flow_loss, args, generator)
    if kind == "hmc":
        result = evaluate_hmc(actor, args.beta_hmc, eval_states, args.eval_samples)
    else:
        result = evaluate_langevin(actor, args.beta_ld, eval_states)
    return {
        "kind": kind,
        "K": num_steps,
        "gated": gated,
        "seed": seed,
        "train_s": seconds,
        **result,
    }


# ------------------------------------------------------------------------ report
def configurations(ks: list[int]) -> list[tuple[str, int, bool | None]]:
    """HMC gated and plain (one K = 0 row: no chain, no gates), then the Langevin flow."""
    out: list[tuple[str, int, bool | None]] = []
    for k in ks:
        out += [("hmc", 0, None)] if k == 0 else [("hmc", k, True), ("hmc", k, False)]
    out += [("langevin", k, None) for k in ks]
    return out


def label(kind: str, k: int, gated: bool | None) -> str:
    if kind == "langevin":
        return f"langevin K={k}"
    return f"hmc K={k}" + ("" if gated is None else (" gated" if gated else " plain"))


def summarise(runs: list[dict]) -> list[dict]:
    """Seed mean and std of every number, per configuration, in grid order."""
    table = []
    for kind, k, gated in dict.fromkeys((r["kind"], r["K"], r["gated"]) for r in runs):
        group = [r for r in runs if (r["kind"], r["K"], r["gated"]) == (kind, k, gated)]
        row: dict[str, Any] = {
            "config": label(kind, k, gated),
            "kind": kind,
            "K": k,
            "gated": gated,
            "seeds": [r["seed"] for r in group],
        }
        for key, value in group[0].items():
            if isinstance(value, float) and key not in ("train_s",):
                values = np.array([r[key] for r in group])
                row[key] = float(values.mean())
                row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if group[0]["step_size"]:
            row["step_size_mean"] = float(np.mean([np.mean(r["step_size"]) for r in group]))
        row["train_s"] = float(np.mean([r["train_s"] for r in group]))
        table.append(row)
    return table


def markdown(table: list[dict]) -> str:
    rows = [
        "| config | regret E[-Q(s, aK)] | regret at a0 | regret at the optimum | gap to optimum "
        "| mean step size |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        unit = "nats (log Z - ELBO)" if r["kind"] == "hmc" else "J* - J"
        step = f"{r['step_size_mean']:.3f}" if "step_size_mean" in r else "-"
        rows.append(
            f"| {r['config']} | {r['regret']:.4f} ± {r['regret_std']:.4f} "
            f"| {r['regret_base']:.4f} ± {r['regret_base_std']:.4f} "
            f"| {r['regret_posterior']:.4f} "
            f"| {r['gap']:.3f} ± {r['gap_std']:.3f} {unit} | {step} |"
        )
    return "\n".join(rows)


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, select in (
        ("HMC gated", lambda r: r["kind"] == "hmc" and r["gated"] is not False),
        ("HMC plain leapfrog", lambda r: r["kind"] == "hmc" and r["gated"] is not True),
        ("Langevin flow", lambda r: r["kind"] == "langevin"),
    ):
        rows = [r for r in table if select(r)]
        if not rows:
            continue
        ks = [r["K"] for r in rows]
        for ax, key in zip(axes, ("regret", "gap"), strict=True):
            mean = np.array([r[key] for r in rows])
            std = np.array([r[f"{key}_std"] for r in rows])
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=name)
    axes[0].set_title("regret E[max Q - Q(s, aK)]")
    axes[1].set_title("gap to the optimum: HMC log Z - ELBO (nats), LD J* - J")
    for ax in axes:
        ax.set_xlabel("K (chain steps / flow layers)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Mechanism benchmark: linear policies, known critic (mean ± std, 3 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-steps", type=int, nargs="+", default=list(KS), help="K values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1500, help="alternating updates")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam, policy and chain")
    parser.add_argument("--beta-hmc", type=float, default=0.05, help="fixed beta of (17)")
    parser.add_argument("--beta-ld", type=float, default=0.1, help="fixed beta of (10)")
    parser.add_argument("--eval-states", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=16, help="HMC chains per state")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--fresh", action="store_true", help="ignore finished configurations")
    args = parser.parse_args(argv)
    for name in ("iterations", "batch_size", "eval_states", "eval_samples", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("lr", "beta_hmc", "beta_ld"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    bad = [k for k in args.num_steps if k < 0]
    if bad:
        parser.error(f"--num-steps must be >= 0, got {bad}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # The protocol a finished run was trained under; the grid (K values, seeds) may grow.
    grid = ("output", "fresh", "threads", "num_steps", "seeds")
    settings = {k: v for k, v in vars(args).items() if k not in grid}
    header = provenance(command=["python", "benchmarks/mechanism.py", *argv])
    runs: list[dict] = []
    if args.output.exists() and not args.fresh:
        previous = json.loads(args.output.read_text())
        kept = previous.get("settings", {})
        if all(kept.get(k) == v for k, v in settings.items()):
            runs = previous["runs"]  # same protocol: keep what finished
    for kind, k, gated in configurations(args.num_steps):
        for seed in args.seeds:
            if any(
                (r["kind"], r["K"], r["gated"], r["seed"]) == (kind, k, gated, seed) for r in runs
            ):
                continue
            result = run_one(kind, k, gated, seed, args)
            logger.info(
                "%-18s seed %d: regret %.4f (base %.4f), gap %.4f, %.0f s",
                label(kind, k, gated),
                seed,
                result["regret"],
                result["regret_base"],
                result["gap"],
                result["train_s"],
            )
            runs.append(result)
            table = summarise(runs)
            out = {
                **header,
                "protocol": __doc__.split("\n\n")[1:5],
                "settings": settings,
                "table": table,
                "markdown": markdown(table),
                "runs": runs,
            }
            tmp = args.output.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(out, indent=1) + "\n")
            tmp.replace(args.output)
    table = summarise(runs)
    plot(table, args.output.with_suffix(".png"))
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
