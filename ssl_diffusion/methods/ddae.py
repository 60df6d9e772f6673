"""Diffusion models as self-supervised learners.

``ddae``: DDAE (Xiang et al., "Denoising Diffusion Autoencoders are Unified Self-supervised
Learners", ICCV 2023, arXiv 2303.09769) — a plain denoiser (DiT / UNet / UViT) trained with a
diffusion objective; its representation is the pooled feature of one layer at one noise level.

``ddaepp``: DDAE++ (Xiang et al. 2025, arXiv 2505.10999) — the same with self-conditioning (the
pooled mid-layer feature conditions the later layers, same forward pass) and optional
contrastive self-distillation on the self-conditioning vector (MoCo v3 form, momentum teacher).

Extra config keys: ``model.*`` (arch, preset, sizes), ``selfcond.*`` (ddaepp; ``enabled`` null =
on), ``diffusion.*`` (objective ddpm | edm | flow), ``sampler.*`` (generation), ``augment.*``
(geometric augmentation), ``contrastive.*`` (ddaepp; weight 0 = off), ``ddae.*`` (class
conditioning, label dropout, diffusion augmentation), ``eval.features.*`` (feature layer, noise
level, EMA). EMA of the weights is on unless ``ema.enabled=false``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ssl_diffusion.config import Config
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.diffusion import build_objective
from ssl_diffusion.diffusion.augment import AUG_DIM, AugmentPipe
from ssl_diffusion.diffusion.config import SamplerConfig
from ssl_diffusion.diffusion.generate import sample
from ssl_diffusion.diffusion.noise import to_sigma
from ssl_diffusion.diffusion.rng import per_sample_randn, seed_generators, seeded_randn
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.spec import FeatureSpec
from ssl_diffusion.methods.base import SSLMethod, step_generator
from ssl_diffusion.methods.contrastive import (
    moco_v3_predictor,
    moco_v3_projector,
    symmetric_infonce,
)
from ssl_diffusion.methods.ema import batchnorm_batch_stats, clone_frozen
from ssl_diffusion.models import build_denoiser
from ssl_diffusion.models.base import arm_module_rng
from ssl_diffusion.registry import METHODS


def content_seeds(x: Tensor, seed: int) -> list[int]:
    """One seed per image from its quantised pixels: features do not depend on the batch, the
    dataset order or the device count, and the same image always gets the same noise."""
    q = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    key = int(seed).to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8, key=key).digest(), "little")
            >> 1 for img in q]


@METHODS.register("ddae")
class DDAE(SSLMethod):
    generative = True  # samples images; features are a function of (layer, noise level)
    default_aug = "diffusion"
    normalization = "symmetric"  # diffusion models work on [-1, 1]
    default_ema = True
    selfcond_default = False  # ddae is the baseline: self-conditioning off
    allow_contrastive = False

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        self.objective = build_objective(cfg.diffusion)
        self.use_aug_labels = cfg.ddae.augment or cfg.contrastive.weight > 0
        sc_cfg = copy.deepcopy(cfg.selfcond)
        sc_cfg.enabled = self.selfcond_enabled()
        self.net = build_denoiser(
            cfg.model, sc_cfg, in_channels=info.channels, image_size=info.image_size,
            num_classes=info.num_classes if cfg.ddae.class_conditional else 0,
            aug_dim=AUG_DIM if self.use_aug_labels else 0,
        )
        self.feature_layer = self._resolve_layer(cfg.eval.features.layer)
        self.feature_dim = self.net.feature_dims[self.feature_layer]
        self.augment_pipe = AugmentPipe(cfg.augment) if cfg.ddae.augment else None
        if cfg.contrastive.weight > 0:
            with arm_module_rng("contrastive"):  # heads only this arm has: keep draws paired
                self._setup_contrastive()
        self.setup_shared()

    # ------------------------------------------------------------------ configuration
    def selfcond_enabled(self) -> bool:
        enabled = self.cfg.selfcond.enabled
        return self.selfcond_default if enabled is None else enabled

    def validate_config(self) -> None:
        c = self.cfg
        if c.method == "ddae" and c.selfcond.enabled:
            raise UserError("method ddae is the baseline without self-conditioning; use "
                            "method=ddaepp for selfcond.enabled=true")
        if c.contrastive.weight > 0 and not self.allow_contrastive:
            raise UserError(f"contrastive.weight={c.contrastive.weight} needs method=ddaepp "
                            f"(contrastive self-distillation acts on the self-conditioning vector)")
        if c.contrastive.weight < 0:
            raise UserError(f"contrastive.weight must be >= 0, got {c.contrastive.weight}")
        if not 0 <= c.ddae.label_dropout < 1:
            raise UserError(f"ddae.label_dropout must be in [0, 1), got {c.ddae.label_dropout}")
        self.feature_spec()  # raises for a noise level outside the schedule
        if getattr(self.info, "kind", "image") == "latent":
            if c.sampler.clip_x0:
                raise UserError("sampler.clip_x0=true clips to the pixel range [-1, 1], which "
                                "latents do not have; set sampler.clip_x0=false (data.name=latents)")
            if c.eval.fid.enabled:
                raise UserError("eval.fid.enabled=true during training needs pixels; for latents "
                                "run main_sample_latent.py on the checkpoint (VAE decode + ADM "
                                "reference batch) and set eval.fid.enabled=false")

    def arch_name(self) -> str:
        m = self.cfg.model
        return f"{m.arch}:{m.preset}"

    def ema_source(self) -> nn.Module:
        return self.net

    def _resolve_layer(self, layer: str) -> str:
        return self.net.default_feature_layer if layer == "auto" else self.net.check_layer(layer)

    def feature_spec(self, layer: str | None = None, noise: float | None = None,
                     unit: str | None = None, use_ema: bool | None = None) -> FeatureSpec:
        """Explicit arguments first, then ``eval.features``; ``layer="auto"`` is the model's
        default tap and ``noise`` is read in ``unit`` (sigma or logsnr) and checked against the
        objective's range."""
        f = self.cfg.eval.features
        layer = self._resolve_layer(f.layer if layer is None else layer)
        source = "eval.features.noise=" if noise is None else "noise "
        noise = f.noise if noise is None else noise
        unit = f.noise_unit if unit is None else unit
        sigma = to_sigma(noise, unit)
        try:
            self.objective.check_sigma(sigma)
        except UserError as exc:
            raise UserError(f"{source}{noise:g} ({unit}): {exc}") from None
        use_ema = f.use_ema if use_ema is None else use_ema
        return FeatureSpec(layer, sigma, bool(use_ema and self.ema is not None))

    # ------------------------------------------------------------------ features
    def feature_net(self, use_ema: bool | None = None) -> nn.Module:
        use_ema = self.cfg.eval.features.use_ema if use_ema is None else use_ema
        return self.ema.module if (use_ema and self.ema is not None) else self.net

    @torch.no_grad()
    def extract_features(self, x: Tensor, layer: str | None = None, sigma: float | None = None,
                         use_ema: bool | None = None) -> Tensor:
        """Pooled features (N, D) of ``layer`` at noise ``sigma``; per-image seeded noise."""
        layer = self.feature_layer if layer is None else layer
        return self.extract_features_multi(x, [layer], sigma, use_ema)[layer]

    @torch.no_grad()
    def extract_features_multi(self, x: Tensor, layers: Sequence[str], sigma: float | None = None,
                               use_ema: bool | None = None) -> dict[str, Tensor]:
        """Pooled features {layer: (N, D_layer)} of several layers from one forward pass at one
        noise level (the layer x noise sweep); the noise is the same as ``extract_features``'."""
        layers = [self.net.check_layer(name) for name in layers]
        last = max(layers, key=self.net.layer_names.index)
        sigma = self.feature_spec().sigma if sigma is None else sigma
        net = self.feature_net(use_ema)
        was_training = net.training
        net.eval()
        noise = seeded_randn(content_seeds(x, self.cfg.eval.features.seed), x.shape[1:]).to(x)
        x_in, c_noise = self.objective.noisy_input(x, sigma, noise)
        out = net(x_in, c_noise, taps=tuple(layers), stop_after=last)
        net.train(was_training)
        return {name: out.feats[name].float() for name in layers}  # each (N, D_layer)

    # ------------------------------------------------------------------ training
    def _labels(self, labels: Tensor) -> Tensor | None:
        if not self.cfg.ddae.class_conditional:
            return None
        drop = torch.rand(labels.shape[0], device=labels.device) < self.cfg.ddae.label_dropout
        return torch.where(drop, torch.full_like(labels, self.info.num_classes), labels)

    def training_loss(self, views: list[Tensor], labels: Tensor) -> dict[str, Tensor]:
        x = views[0]  # (N, C, H, W) in [-1, 1]
        class_labels = self._labels(labels)
        if self.cfg.contrastive.weight > 0:
            out = self._contrastive_step(x, class_labels)
        else:
            aug = None
            if self.augment_pipe is not None:
                x_aug, aug = self.augment_pipe(x)
                x = x_aug
            elif self.use_aug_labels:
                aug = x.new_zeros(x.shape[0], AUG_DIM)
            sigma, noise = self._train_noise(x)
            d = self.objective.loss(self.net, x, class_labels=class_labels, aug_labels=aug,
                                    sigma=sigma, noise=noise)
            out = {"loss": d["loss"], "loss_diffusion": d["loss_diffusion"]}
            out.update({k: v for k, v in d.items() if k.startswith("loss_") and k != "loss_per_sample"})
        if self.online_linear is not None and self.global_step % self.cfg.ddae.online_feats_every == 0:
            out["feats"] = self.extract_features(views[0])
        return out

    def _train_noise(self, x: Tensor, chunks: int = 1) -> tuple[Tensor, Tensor]:
        """Noise levels (N,) and noise (N, C, H, W) of the diffusion loss from per-step streams.

        Drawn in ``chunks`` equal parts, so the 2N views of self-distillation get the same first
        N levels and noise tensors as a plain arm's N images at the same seed and step.
        """
        gens = {name: step_generator(self.cfg.seed, self.global_rank, self.global_step, name)
                for name in ("sigma", "noise")}
        n = x.shape[0] // chunks
        sigma = torch.cat([self.objective.sample_train_sigma(n, generator=gens["sigma"])
                           for _ in range(chunks)])  # (N,)
        noise = torch.cat([torch.randn((n, *x.shape[1:]), generator=gens["noise"])
                           for _ in range(chunks)])  # (N, C, H, W)
        return sigma.to(x.device), noise.to(x)

    # ------------------------------------------------------------------ contrastive (ddaepp)
    def _setup_contrastive(self) -> None:
        c = self.cfg.contrastive
        source = self.net.resolve_source_layer(self.cfg.selfcond.source_layer)
        self.contrastive_layer = source
        in_dim = self.net.feature_dims[source]
        if c.feature == "signal":
            if not self.selfcond_enabled():
                raise UserError("contrastive.feature=signal needs self-conditioning; use feature=pooled")
            in_dim = self.net.selfcond.cond_dim
        self.projector = moco_v3_projector(in_dim, c.proj_hidden_dim, c.proj_output_dim)
        self.predictor = moco_v3_predictor(c.proj_output_dim, c.pred_hidden_dim)
        self.teacher_projector = clone_frozen(self.projector)
        self.teacher_net = clone_frozen(self.net) if c.teacher == "momentum" else None
        view_cfg = copy.deepcopy(self.cfg.augment)
        view_cfg.p = c.aug_p
        self.view_pipe = AugmentPipe(view_cfg)

    @property
    def class_conditional(self) -> bool:
        return self.cfg.ddae.class_conditional

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        if self.cfg.contrastive.weight <= 0:
            return []
        pairs = [(self.projector, self.teacher_projector)]
        if self.teacher_net is not None:
            pairs.insert(0, (self.net, self.teacher_net))
        return pairs

    def momentum_range(self) -> tuple[float, float]:
        c = self.cfg.contrastive
        return (c.momentum_start, c.momentum_end)

    def _lambda(self) -> float:
        c = self.cfg.contrastive
        if c.warmup_steps <= 0:
            return c.weight
        return c.weight * min(1.0, self.global_step / c.warmup_steps)

    def _teacher(self) -> nn.Module:
        if self.teacher_net is not None:
            return self.teacher_net
        if self.ema is None:
            raise UserError("contrastive.teacher=ema needs ema.enabled=true")
        return self.ema.module

    def _vector(self, net: nn.Module, x: Tensor, sigma: float, aug: Tensor,
                class_labels: Tensor | None) -> Tensor:
        """Self-conditioning vector of views noised at the distillation level (truncated pass)."""
        noise = torch.randn_like(x)
        x_in, c_noise = self.objective.noisy_input(x, sigma, noise)
        layer = self.contrastive_layer
        out = net(x_in, c_noise, class_labels=class_labels, aug_labels=aug, taps=(layer,),
                  stop_after=layer)
        return self._select(out, layer)

    def _select(self, out: Any, layer: str) -> Tensor:
        if self.cfg.contrastive.feature == "signal":
            return out.selfcond_signal
        return out.selfcond if out.selfcond is not None else out.feats[layer]

    def _contrastive_step(self, x: Tensor, class_labels: Tensor | None) -> dict[str, Tensor]:
        c = self.cfg.contrastive
        # the teachers were moved towards the students before this step (SSLMethod.update_teachers)
        views, aug = self.view_pipe(torch.cat([x, x]))  # (2N, C, H, W), (2N, 9)
        labels2 = None if class_labels is None else torch.cat([class_labels, class_labels])
        taps = (self.contrastive_layer,) if c.shared_pass else ()
        sigma, noise = self._train_noise(views, chunks=2)
        d = self.objective.loss(self.net, views, class_labels=labels2, aug_labels=aug, taps=taps,
                                sigma=sigma, noise=noise)
        if c.shared_pass:
            z = self._select(d["output"], self.contrastive_layer)
        else:
            z = self._vector(self.net, views, c.student_sigma, aug, labels2)  # (2N, D)
        q1, q2 = self.predictor(self.projector(z)).chunk(2)  # (N, P) each
        teacher = self._teacher()
        with torch.no_grad(), batchnorm_batch_stats(teacher, self.teacher_projector,
                                                    enabled=c.teacher_bn == "batch"):
            teacher_sigma = c.teacher_sigma if c.teacher_sigma is not None else c.student_sigma
            zt = self._vector(teacher, views, teacher_sigma, aug, labels2)
            k1, k2 = self.teacher_projector(zt).chunk(2)
        l_cl = symmetric_infonce(q1, q2, k1, k2, c.temperature)
        lam = self._lambda()
        return {"loss": d["loss"] + lam * l_cl, "loss_diffusion": d["loss_diffusion"],
                "loss_contrastive": l_cl, "contrastive_lambda": torch.tensor(lam)}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, seeds: Sequence[int], sampler_cfg: SamplerConfig | None = None, class_labels: Tensor | None = None,
                 use_ema: bool = True, progress: Any = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """Images (N, C, H, W) in [-1, 1] for per-sample ``seeds`` (batch-size independent)."""
        sampler_cfg = sampler_cfg or self.cfg.sampler
        net = self.feature_net(use_ema)
        was_training = net.training
        net.eval()
        shape = (self.info.channels, self.info.image_size, self.info.image_size)
        generators = seed_generators(seeds)
        noise = per_sample_randn(generators, shape, dtype=dtype).to(self.device)
        if class_labels is not None:
            class_labels = class_labels.to(self.device)
        images = sample(self.objective, net, noise, sampler_cfg, class_labels=class_labels,
                        generators=generators, null_label=self.info.num_classes, progress=progress)
        net.train(was_training)
        if getattr(self.info, "kind", "image") == "latent":
            return images.float()  # normalised latents: decoded by the latent generation stage
        return images.float().clamp(-1, 1)


@METHODS.register("ddaepp")
class DDAEPP(DDAE):
    selfcond_default = True  # DDAE++: self-conditioning on unless selfcond.enabled=false
    allow_contrastive = True


__all__ = ["DDAE", "DDAEPP", "content_seeds"]
