"""Diffusion objectives (DDPM / EDM / flow) behind one ``Objective`` contract; see ``base.py``."""

from __future__ import annotations

from ssl_diffusion.diffusion.config import OBJECTIVES, TRAIN_NOISE, DiffusionConfig
from ssl_diffusion.diffusion.objectives.base import DenoiseResult, NetInput, Objective
from ssl_diffusion.diffusion.objectives.ddpm import DDPMObjective
from ssl_diffusion.diffusion.objectives.edm import EDMObjective, EDMPrecond
from ssl_diffusion.diffusion.objectives.flow import FlowObjective
from ssl_diffusion.errors import UserError, did_you_mean

OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    "ddpm": DDPMObjective,
    "edm": EDMObjective,
    "flow": FlowObjective,
}


def _check_config(cfg: DiffusionConfig) -> None:
    def bad(field: str, value: object, need: str) -> UserError:
        return UserError(f"diffusion.{field}={value} is invalid; it must be {need}")

    if cfg.objective not in OBJECTIVES:
        raise UserError(
            f"unknown diffusion.objective `{cfg.objective}`; choose one of {', '.join(OBJECTIVES)}"
            f"{did_you_mean(cfg.objective, OBJECTIVES)}"
        )
    if cfg.train_noise not in TRAIN_NOISE:
        raise UserError(
            f"unknown diffusion.train_noise `{cfg.train_noise}`; choose one of {', '.join(TRAIN_NOISE)}"
            f"{did_you_mean(cfg.train_noise, TRAIN_NOISE)}"
        )
    if not 0 < cfg.beta_start < cfg.beta_end < 1:
        raise bad(
            "beta_start/beta_end",
            f"{cfg.beta_start}/{cfg.beta_end}",
            "0 < beta_start < beta_end < 1",
        )
    if cfg.num_timesteps < 2:
        raise bad("num_timesteps", cfg.num_timesteps, ">= 2")
    for field in ("sigma_data", "p_std", "t_std", "rho"):
        if getattr(cfg, field) <= 0:
            raise bad(field, getattr(cfg, field), "> 0")
    if cfg.cosine_loss_weight < 0:
        raise bad("cosine_loss_weight", cfg.cosine_loss_weight, ">= 0")
    for field in ("sigma_min", "sigma_max"):
        value = getattr(cfg, field)
        if value is not None and value <= 0:
            raise bad(field, value, "> 0 (a VE noise level) or null for the objective's default")
    if cfg.sigma_min is not None and cfg.sigma_max is not None and cfg.sigma_min >= cfg.sigma_max:
        raise bad("sigma_min", cfg.sigma_min, f"< diffusion.sigma_max={cfg.sigma_max}")


def build_objective(cfg: DiffusionConfig) -> Objective:
    """The objective named by ``cfg.objective``, after validating the config."""
    _check_config(cfg)
    objective = OBJECTIVE_CLASSES[cfg.objective](cfg)
    if objective.sigma_min >= objective.sigma_max:
        raise UserError(
            f"diffusion.sigma_min={objective.sigma_min:g} must be below sigma_max={objective.sigma_max:g} "
            f"for objective {cfg.objective}; lower sigma_min or raise sigma_max"
        )
    return objective


__all__ = [
    "OBJECTIVE_CLASSES",
    "DDPMObjective",
    "DenoiseResult",
    "EDMObjective",
    "EDMPrecond",
    "FlowObjective",
    "NetInput",
    "Objective",
    "build_objective",
]
