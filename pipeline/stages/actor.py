"""The trainer side of an iteration: the Megatron actor built from a config, and its GRPO-λ update.

`Actor` bundles what megatron_ext needs (model chunks, optimizer, scheduler, process groups, loss
settings) so the loop in `pipeline.run` and the staged `train` stage read as a few calls: build it
from a checkpoint, `update` on a rollout batch, `save`, and `hf_weights` for refit / export.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ExperimentConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# HF files that travel with exported weights (everything but the weights themselves).
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def loss_settings(cfg: ExperimentConfig):
    """megatron_ext.train_step.LossSettings from the algorithm and rollout sections."""
    from megatron_ext.train_step import LossSettings

    a = cfg.algorithm
    return LossSettings(
        variant=a.variant,
        style=a.style,
        gamma=a.gamma,
        lam=a.lam,
        eps_low=a.eps_low,
        eps_high=a.eps_high,
        dual_clip=a.dual_clip,
        adv_clamp_min=a.adv_clamp_min,
        weight_norm=a.weight_norm,
        kl_coef=a.kl_coef,
        kl_estimator=a.kl_estimator,
        aggregation=a.aggregation,
        temperature=cfg.rollout.temperature,
        tis_cap=cfg.rollout.tis_cap,
        recompute_old_logp=a.recompute_old_logp,
    )


@dataclass
class Actor:
    """A Megatron actor (this rank's model chunks) with its optimizer and loss settings."""

    cfg: ExperimentConfig
    hf_config: dict[str, Any]
    chunks: list
    optimizer: Any
    scheduler: Any
    groups: Any
    reference: list | None = None  # frozen initial policy (only when algorithm.kl_coef > 0)

    @classmethod
    def build(cls, cfg: ExperimentConfig, hf_dir: Path, *, with_optimizer: bool = True) -> Actor:
        """Init the process groups (a world of one unless under torchrun) and the model chunks."""
        from megatron.core import parallel_state as ps

        from megatron_ext.parallel import current_groups, initialize_model_parallel
        from megatron_ext.train_step import build_optimizer, wrap_ddp

        par, opt = cfg.parallelism, cfg.optimizer

        if ps.model_parallel_is_initialized():
            groups = current_groups()
        else:
            groups = initialize_model_parallel(par.tensor_parallel, par.pipeline_parallel, seed=cfg.run.seed)
        hf_config = json.loads((Path(hf_dir) / "config.json").read_text())
        chunks = cls._build_chunks(cfg, hf_config)
        optimizer = scheduler = None
        if with_optimizer:
            chunks = wrap_ddp(chunks, use_distributed_optimizer=par.use_distributed_optimizer)
            steps = cfg.run.iterations * cfg.algorithm.updates_per_iteration
            optimizer, scheduler = build_optimizer(
                chunks,
                lr=opt.lr,
                weight_decay=opt.weight_decay,
                betas=(opt.adam_beta1, opt.adam_beta2),
                eps=opt.adam_eps,
                clip_grad=opt.clip_grad,
                use_distributed_optimizer=par.use_distributed_optimizer,
                lr_schedule=opt.lr_schedule,
                warmup_iters=opt.warmup_iterations,
                total_iters=steps,
                min_lr=opt.min_lr,
            )
        return cls(cfg, hf_config, chunks, optimizer, scheduler, groups)

    @staticmethod
    def _build_chunks(cfg: ExperimentConfig, hf_config: dict[str, Any]) -> list:
        from megatron_ext.model import Fp8Recipe, build_gpt_model

        m, par = cfg.model, cfg.parallelism
        fp8_recipe = Fp8Recipe(
            margin=m.fp8_margin,
            amax_history_len=m.fp8_amax_history_len,
            amax_compute_algo=m.fp8_amax_compute_algo,
        )
        return build_gpt_model(
            hf_config,
            tp=par.tensor_parallel,
            pp=par.pipeline_parallel,
            params_dtype=DTYPES[m.params_dtype],
            fp8=m.fp8,
            fp8_recipe=fp8_recipe,
            use_te=m.use_transformer_engine,
        )

    def load(self, ckpt_dir: Path, *, with_optimizer: bool) -> dict[str, Any]:
        """Load weights (and optimizer/scheduler state when `with_optimizer`) from a checkpoint."""
        from megatron_ext.checkpoint import load_checkpoint

        if with_optimizer:
            return load_checkpoint(ckpt_dir, self.chunks, self.optimizer, self.scheduler)
        return load_checkpoint(ckpt_dir, self.chunks)

    def load_reference(self, ckpt_dir: Path) -> None:
        """Build the frozen reference policy (for the KL term) from a model-only checkpoint."""
        from megatron_ext.checkpoint import load_checkpoint

        self.reference = self._build_chunks(self.cfg, self.hf_config)
        load_checkpoint(ckpt_dir, self.reference)
        for chunk in self.reference:
            chunk.requires_grad_(False)

    def update(
        self, batch: dict[str, torch.Tensor], *, progress: Callable[[int], None] | None = None
    ) -> dict[str, float]:
        """`algorithm.updates_per_iteration` optimizer steps on equal minibatches of `batch`.

        One step: `train_step` as is (it recomputes π_old itself when asked). Several steps (PPO
        epochs): π_old is recomputed once for the whole batch before the first step, so every
        minibatch is clipped around the policy that existed before the update; the rollout-vs-trainer
        log-prob mismatch is then measured on that recomputation. Each step sees this DP rank's shard.
        Returns the step metrics averaged over the steps, as `train/<name>`.
        """
        from megatron_ext.losses import logprob_mismatch
        from megatron_ext.train_step import RolloutBatch, compute_logprobs, train_step

        settings = loss_settings(self.cfg)
        mbs, g = self.cfg.parallelism.micro_batch_size, self.groups
        full = RolloutBatch(**batch)
        if self.reference is not None:
            full.ref_logp = compute_logprobs(
                self.reference, full, micro_batch_size=mbs, temperature=settings.temperature, groups=g
            )
        steps = self.cfg.algorithm.updates_per_iteration
        mismatch = None
        if steps > 1 and settings.recompute_old_logp:
            recomputed = compute_logprobs(
                self.chunks, full, micro_batch_size=mbs, temperature=settings.temperature, groups=g
            )
            mismatch = logprob_mismatch(full.old_logp, recomputed, full.response_mask)
            full.old_logp = recomputed
            settings = dataclasses.replace(settings, recompute_old_logp=False)
        per_step: list[dict[str, float]] = []
        n = len(full)
        for s in range(steps):
            mini = full.rows(s * n // steps, (s + 1) * n // steps).shard(g.dp_rank, g.dp_size)
            per_step.append(
                train_step(
                    self.chunks,
                    self.optimizer,
                    self.scheduler,
                    mini,
                    settings,
                    micro_batch_size=mbs,
                    groups=g,
                )
            )
            if progress is not None:
                progress(1)
        out = {f"train/{k}": sum(float(m[k]) for m in per_step) / steps for k in per_step[0]}
        if mismatch is not None:
            out["train/logprob_mismatch_mean_abs"] = float(mismatch["mean_abs"])
            out["train/logprob_mismatch_max_ratio"] = float(mismatch["max_ratio"])
        return out

    def save(self, ckpt_dir: Path, *, iteration: int, extra: dict[str, Any]) -> None:
        """Atomic checkpoint of model, optimizer, scheduler and RNG (megatron_ext.checkpoint)."""
        from megatron_ext.checkpoint import save_checkpoint

        save_checkpoint(
            ckpt_dir, self.chunks, self.optimizer, self.scheduler, iteration=iteration, extra=extra
        )

    def hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full HF-named tensors of the current weights (collective over the model-parallel group)."""
        from conversion.export import export_hf_weights

        return export_hf_weights(self.chunks, self.hf_config, groups=self.groups)

    def save_hf(self, out_dir: Path, *, side_files_from: Path) -> Path:
        """Write the current weights as an HF directory (safetensors + config/tokenizer), atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in self.hf_weights()}
        if self.groups.world_rank == 0:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            for name in HF_SIDE_FILES:
                if (Path(side_files_from) / name).exists():
                    shutil.copy2(Path(side_files_from) / name, tmp / name)
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
        return out_dir
