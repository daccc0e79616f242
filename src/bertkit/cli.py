"""`bertkit` command line: each subcommand is a small module in bertkit.commands with
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their command runs,
so `bertkit --help` stays fast and a missing optional dependency of one command cannot break another.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Iterator

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "show a checkpoint's config, parameter count and heads"),
    "convert": ("convert", "convert a TF or HF checkpoint to a Hugging Face-format directory"),
    "finetune": ("finetune", "fine-tune on one task (or several: multi-task)"),
    "evaluate": ("evaluate", "evaluate a fine-tuned model on a split; writes metrics.json"),
    "predict": ("predict", "write predictions in the benchmark's format"),
    "serve": ("serve", "a fine-tuned run behind an HTTP JSON endpoint (POST /predict)"),
    "pretrain-data": ("pretrain_data", "raw text -> sharded pre-training records"),
    "inspect": ("inspect", "decode pre-training records back to text"),
    "convert-records": ("convert_records", "TFRecord/HDF5/lddl Parquet pre-training data -> bertkit records"),
    "pretrain": ("pretrain", "MLM(+NSP) pre-training, from scratch or continued"),
    "prepare-wiki": ("prepare_wiki", "Wikipedia XML dump -> one sentence per line text"),
    "train-tokenizer": ("train_tokenizer", "train a WordPiece vocab on a corpus"),
    "polyphone-convert": ("polyphone_convert", "convert polyphone data between .sent/.lb and JSONL"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    parser = argparse.ArgumentParser(prog="bertkit", description="BERT pre-training, fine-tuning and evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported to add its flags.
        if argv and argv[0] == name:
            command = importlib.import_module(f"bertkit.commands.{module}")
            # Commands whose flags depend on other flags (finetune adds the flags of the tasks
            # named by --task) take the raw argv as well.
            if command.add_arguments.__code__.co_argcount > 1:
                command.add_arguments(p, argv[1:])
            else:
                command.add_arguments(p)
            p.set_defaults(_module=module)
            chosen = p
    return parser, chosen


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, torchrun stopping its workers, a batch scheduler's time limit), raised
    where the process is, like Ctrl-C: by default SIGTERM ends the process without unwinding, so the
    cleanup of half-written files (prediction and record .tmp files) never ran."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread; SIGTERM keeps its default there
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if int(os.environ.get("RANK", "0")) > 0:
        # Under torchrun every rank loads the same checkpoint: its notes once (rank 0), not once per rank.
        logging.getLogger("bertkit").setLevel(logging.ERROR)
    module = importlib.import_module(f"bertkit.commands.{args._module}")
    try:
        with sigterm_unwinds():
            return int(module.run(args) or 0)
    except KeyboardInterrupt as interrupt:
        print("terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
    # OSError: a file or directory that cannot be written or read (permissions, a file where a
    # directory is needed, a full disk); its message names the path.
    except (ValueError, OSError, RuntimeError) as err:
        if getattr(args, "traceback", False) or os.environ.get("BERTKIT_TRACEBACK"):
            raise
        print(f"bertkit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
