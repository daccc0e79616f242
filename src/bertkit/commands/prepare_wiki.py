"""`bertkit prepare-wiki DUMP --output FILE`: Wikipedia XML(.bz2) -> one sentence per line."""

from __future__ import annotations

import argparse
from pathlib import Path

from bertkit.data.wikipedia import prepare_wiki


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dump", help="pages-articles XML dump (.xml, .xml.bz2 or .xml.gz)")
    p.add_argument("--output", required=True, help="text file to write (blank line between articles)")


def run(args: argparse.Namespace) -> int:
    if not Path(args.dump).is_file():
        raise FileNotFoundError(f"DUMP {args.dump}: no such file")
    stats = prepare_wiki(args.dump, args.output)
    print(f"{args.output}: {stats.articles} articles, {stats.sentences} sentences from {stats.pages} pages "
          f"(skipped {stats.redirects} redirects, {stats.disambiguation} disambiguation pages, "
          f"{stats.other_namespaces} non-article pages, "
          f"{stats.empty} without prose)")
    return 0
