"""CLI: `python -m conversion {hf-to-megatron,megatron-to-hf,verify}` (console script `grpo-convert`).

Errors a user can cause (bad paths, non-empty output, TP not dividing the KV heads, dtype overflow,
missing or corrupt files, unsupported architectures) print one `error:` line and exit with status 2;
`verify` exits with status 1 when the logits differ by more than --tol.
"""

from __future__ import annotations

import argparse
import sys

from conversion.dist_io import CheckpointFormatError
from conversion.safetensors_io import SafetensorsError

EXIT_USAGE, EXIT_MISMATCH = 2, 1


def _hf_to_megatron(args: argparse.Namespace) -> int:
    from conversion.convert import hf_to_megatron

    out = hf_to_megatron(
        args.hf_dir,
        args.out,
        tp=args.tp,
        pp=args.pp,
        dtype=args.dtype,
        force=args.force,
        bucket_size_mb=args.bucket_size_mb,
        progress=not args.no_progress,
    )
    print(f"wrote Megatron checkpoint {out} (tp={args.tp}, pp={args.pp})")
    return 0


def _megatron_to_hf(args: argparse.Namespace) -> int:
    from conversion.convert import megatron_to_hf

    out = megatron_to_hf(
        args.megatron_dir,
        args.out,
        dtype=args.dtype,
        force=args.force,
        max_shard_size=args.max_shard_size,
        hf_config_dir=args.hf_config_dir,
        progress=not args.no_progress,
    )
    print(f"wrote HF model {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from conversion.verify import LogitsMismatchError, verify_logits

    try:
        diff = verify_logits(args.hf_dir, args.megatron_dir, prompts=args.prompt, tol=args.tol)
    except LogitsMismatchError as e:
        print(f"max abs logits diff: {e.max_abs_diff:.3e} > tol {args.tol:.1e}: FAIL")
        return EXIT_MISMATCH
    print(f"max abs logits diff: {diff:.3e} <= tol {args.tol:.1e}: OK")
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grpo-convert", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF safetensors dir -> Megatron dist checkpoint")
    a.set_defaults(handler=_hf_to_megatron)
    a.add_argument("--hf-dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.add_argument("--dtype", default=None, help="fp32|bf16|fp16 (default: keep the HF dtype)")
    a.add_argument("--bucket-size-mb", type=int, default=256)
    b = sub.add_parser("megatron-to-hf", help="Megatron checkpoint (any TP/PP) -> HF safetensors dir")
    b.set_defaults(handler=_megatron_to_hf)
    b.add_argument("--megatron-dir", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--dtype", default=None, help="fp32|bf16|fp16 (default: keep the checkpoint dtype)")
    b.add_argument("--max-shard-size", default="2GB")
    b.add_argument(
        "--hf-config-dir", default=None, help="HF config/tokenizer dir (default: <megatron-dir>/hf)"
    )
    v = sub.add_parser("verify", help="logits parity (fp32) of an HF dir and a Megatron checkpoint")
    v.set_defaults(handler=_verify)
    v.add_argument("--hf-dir", required=True)
    v.add_argument("--megatron-dir", required=True)
    v.add_argument("--tol", type=float, default=1e-4)
    v.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    for p in (a, b):
        p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
        p.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    from megatron_ext.checkpoint import CheckpointError

    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (
        ValueError,
        KeyError,
        FileNotFoundError,
        FileExistsError,
        SafetensorsError,
        CheckpointFormatError,
        CheckpointError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
