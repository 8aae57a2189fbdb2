"""Where a run lives and what it starts from: its configuration checked before anything exists,
its directory made (or, for ``resume=<run dir>``, found with its checkpoint)."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from torchrl_mcmc.recipes.checkpoint import CHECKPOINT_POINTER, load_checkpoint
from torchrl_mcmc.recipes.config_rules import ConfigError, leaves, validate_config
from torchrl_mcmc.recipes.logs import setup_file_logging
from torchrl_mcmc.recipes.resume import (
    ResumedConfig,
    record_resume,
    requested_keys,
    resume_config,
)

logger = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A checked configuration: what :func:`plan_run` returns."""

    #: The configuration the run uses (for a resume: the run's own, see
    #: :func:`~torchrl_mcmc.recipes.resume.resume_config`).
    cfg: DictConfig
    #: The run directory to continue (``resume=``); ``None`` for a new run.
    resume_dir: Path | None = None
    #: For a resume: what changed from the run's saved configuration, and what was filled in.
    resumed: ResumedConfig | None = None


def plan_run(cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> RunPlan:
    """Everything about a run that the user's input decides, checked before anything exists.

    Every value of ``cfg`` (:func:`~torchrl_mcmc.recipes.config_rules.validate_config`), and
    for ``resume=<run dir>`` the run itself: its directory, its checkpoint, and the
    configuration it continues with, its own ``config.yaml`` changed only where the command
    line may change it (:func:`~torchrl_mcmc.recipes.resume.resume_config`). Raises
    :class:`~torchrl_mcmc.recipes.config_rules.ConfigError`.

    Args:
        cfg: the configuration as composed (without Hydra's own ``hydra`` node).
        hydra_cfg: Hydra's ``hydra`` node, which tells what the command line set and the
            recipe's configuration name. Without it (a direct call), every key of ``cfg`` counts
            as set, and ``cfg`` fills in what the run's configuration lacks.
    """
    validate_config(cfg)
    if not cfg.resume:
        return RunPlan(cfg)
    run_dir = Path(cfg.resume).expanduser().resolve()
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise ConfigError(f"resume={cfg.resume!r}: no run there ({saved_path} is missing).")
    if not (run_dir / CHECKPOINT_POINTER).exists():
        raise ConfigError(f"resume={cfg.resume!r}: the run has no checkpoint yet.")
    if hydra_cfg is not None:
        from hydra import compose

        defaults = compose(hydra_cfg.job.config_name)
        keys = requested_keys(cfg, hydra_cfg, defaults)
    else:
        defaults, keys = cfg, set(leaves(cfg))
    try:
        resumed = resume_config(OmegaConf.load(saved_path), cfg, defaults, keys)
        validate_config(resumed.cfg)
    except ConfigError as err:
        raise ConfigError(f"resume={cfg.resume!r}: {err}") from None
    resumed.cfg.resume = str(run_dir)
    return RunPlan(resumed.cfg, run_dir, resumed)


class Preflight(Callback):
    """Checks a run's configuration before Hydra creates its run directory (``common.yaml``
    registers it under ``hydra.callbacks``).

    Hydra creates the output directory, parents and all, before the recipe runs, and which of
    those folders were there before is unknowable afterwards; so :func:`plan_run` runs here
    first, and a bad configuration exits with status 2 leaving nothing on disk. A resume is
    pointed at its own run directory, so no new one is made for it either. (Multirun jobs skip
    this; :func:`open_run` checks them and removes the job's directory.)
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task_cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        try:
            plan = plan_run(task_cfg, config.hydra)
        except ConfigError as err:
            logger.error("configuration error: %s", err)
            sys.exit(2)
        if plan.resume_dir is not None:
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(plan.resume_dir)


@dataclass
class OpenRun:
    """A run ready to train: what :func:`open_run` returns."""

    #: The configuration it trains with.
    cfg: DictConfig
    #: Its directory (``config.yaml``, ``train.log``, ``checkpoints/``, ``logs/``...).
    path: Path
    #: For a resume: what changed from the run's saved configuration; ``None`` for a new run.
    resumed: ResumedConfig | None = None
    #: For a resume: the checkpoint it continues from.
    state: dict[str, Any] | None = None


def open_run(cfg: DictConfig) -> OpenRun:
    """Plans the run (:func:`plan_run`), then makes its directory, or finds it for a resume.

    The directory is Hydra's output directory in a Hydra app; in a direct call,
    ``<run_root>/<method>/<env>/seed<N>-<time>``, the layout ``common.yaml`` gives Hydra. A new
    run gets its resolved ``config.yaml``; a resume loads its newest intact checkpoint and
    records what it changed (:func:`~torchrl_mcmc.recipes.resume.record_resume`). From here on
    the package's logs go to ``train.log`` too.

    Raises:
        ConfigError: a bad value or ``resume=`` (a directory this process created for the run
            is removed first).
        CheckpointError: a resume whose checkpoints are all unreadable.
    """
    fresh_dir = _hydra_output_dir()
    try:
        plan = plan_run(cfg, _hydra_config())
    except ConfigError:
        _remove_if_fresh(fresh_dir)
        raise
    cfg = plan.cfg
    if plan.resume_dir is not None:
        run_dir = plan.resume_dir
        if fresh_dir is not None and fresh_dir != run_dir:
            _remove_if_fresh(fresh_dir)  # a multirun job's (Preflight redirects a single run's)
    elif fresh_dir is not None:
        run_dir = fresh_dir
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = (
            Path(cfg.run_root).resolve() / cfg.method / cfg.env.name / f"seed{cfg.seed}-{stamp}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_file_logging(run_dir)
    logger.info("run directory: %s", run_dir)
    if plan.resumed is None:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        return OpenRun(cfg, run_dir)
    state = load_checkpoint(run_dir)
    record_resume(run_dir, plan.resumed)
    return OpenRun(cfg, run_dir, plan.resumed, state)


def _hydra_config() -> DictConfig | None:
    """The running Hydra job's own configuration (``hydra.*``), if any."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _hydra_output_dir() -> Path | None:
    hydra_cfg = _hydra_config()
    return None if hydra_cfg is None else Path(hydra_cfg.runtime.output_dir)


def _remove_if_fresh(path: Path | None) -> None:
    """Removes a run directory this process created but never wrote a checkpoint into."""
    if path is None or not path.exists():
        return
    if (path / CHECKPOINT_POINTER).exists():
        return
    shutil.rmtree(path, ignore_errors=True)
