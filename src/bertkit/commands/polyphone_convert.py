"""`bertkit polyphone-convert SRC DST`: polyphone data between the g2pM/CPP `.sent`/`.lb` pair and JSONL.

    bertkit polyphone-convert data/cpp/test test.jsonl      # test.sent + test.lb -> JSONL
    bertkit polyphone-convert test.jsonl out/test           # -> out/test.sent + out/test.lb

A path ending in `.jsonl` is JSONL; anything else is a `.sent`/`.lb` prefix (a path to the
`.sent` or `.lb` file itself is accepted too). Converting there and back gives identical bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bertkit.tasks.polyphone import read_examples, write_jsonl, write_sent_lb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a .jsonl file or a .sent/.lb prefix such as data/train")
    parser.add_argument("dst", help="a .jsonl file or a .sent/.lb prefix")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def _outputs(dst: Path) -> list[Path]:
    if dst.suffix == ".jsonl":
        return [dst]
    prefix = dst.with_suffix("") if dst.suffix in (".sent", ".lb") else dst
    return [Path(f"{prefix}.sent"), Path(f"{prefix}.lb")]


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    existing = [p for p in _outputs(dst) if p.exists()]
    if existing and not args.force:
        raise ValueError(f"{existing[0]} exists; pass --force to overwrite it")
    examples = read_examples(src)
    written = [write_jsonl(examples, dst)] if dst.suffix == ".jsonl" else list(write_sent_lb(examples, dst))
    print(f"{len(examples)} examples: {src} -> {', '.join(map(str, written))}", file=sys.stderr)
    return 0

