"""`bertkit convert SRC DST [--from tf|hf]`: any supported checkpoint -> a Hugging Face directory
(config.json, model.safetensors, vocab.txt), loadable by bertkit and transformers alike."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="TF checkpoint (prefix or directory with bert_model.ckpt.*), "
                                    "HF directory or hub id")
    parser.add_argument("dst", help="output directory (created)")
    parser.add_argument("--from", dest="src_format", choices=("tf", "hf"), default=None,
                        help="source format; detected from the files when omitted")


def run(args: argparse.Namespace) -> int:
    from bertkit.modeling.checkpoints import convert, model_info

    if Path(args.dst).exists() and any(Path(args.dst).iterdir()):
        raise ValueError(f"output directory {args.dst} is not empty; pass a new directory")
    dst = convert(args.src, args.dst, src_format=args.src_format)
    info = model_info(dst)
    print(f"wrote {dst}: {', '.join(info['architectures'] or [])}, {info['layers']} layers, "
          f"hidden {info['hidden']}, {info['parameters']:,} parameters, heads: "
          f"{', '.join(info['heads_present']) or 'none'}")
    return 0
