"""The `export` stage: the run's latest complete checkpoint → an HF directory (conversion.megatron_to_hf).

The HF config and tokenizer come from the converted initial checkpoint (`checkpoints/init/hf`), which
`prepare` wrote; trainer checkpoints hold the model only in Megatron form.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.manifest import ManifestError, RunLayout, load_manifest, resolve_in_run_dir, save_manifest


def export_stage(cfg: ExperimentConfig, layout: RunLayout, *, out: Path | None = None) -> Path:
    """Convert the manifest's checkpoint to HF safetensors in `out` (default run_dir/export/hf)."""
    from conversion.convert import megatron_to_hf

    manifest = load_manifest(layout.root)
    if manifest is None or manifest.checkpoint is None:
        raise ManifestError(f"{layout.root}: nothing to export (run `python -m pipeline prepare` first)")
    ckpt = resolve_in_run_dir(layout.root, manifest.checkpoint)
    out = Path(out) if out is not None else layout.export_hf
    megatron_to_hf(
        ckpt,
        out,
        dtype=cfg.model.params_dtype,
        force=True,
        hf_config_dir=layout.init_checkpoint / "hf",
        progress=cfg.run.progress,
    )
    rel_out = layout.rel(out) if out.resolve().is_relative_to(layout.root.resolve()) else str(out.resolve())
    manifest.set_stage(
        "export",
        "done",
        iteration=manifest.completed_iterations - 1,
        checkpoint=manifest.checkpoint,
        hf=rel_out,
    )
    save_manifest(layout.root, manifest)
    print(f"[pipeline] exported {ckpt} -> {out}", flush=True)
    return out
