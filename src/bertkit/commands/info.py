"""`bertkit info MODEL`: a checkpoint's shape, parameter count and heads, without building the model
(for a TF checkpoint the .index file alone is enough)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="HF directory, hub id, TF checkpoint prefix or directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from bertkit.modeling.checkpoints import model_info

    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("path", info["path"]), ("format", f"{info['format']} ({info['weights']})"),
        ("architectures", ", ".join(info["architectures"] or []) or "-"),
        ("layers", info["layers"]), ("hidden", info["hidden"]), ("heads", info["heads"]),
        ("intermediate", info["intermediate"]), ("vocab", info["vocab"]),
        ("max positions", info["max_positions"]), ("activation", info["hidden_act"]),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
        ("heads present", ", ".join(info["heads_present"]) or "none (encoder only)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
