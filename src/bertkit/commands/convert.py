"""`bertkit convert SRC DST [--from tf|hf]`: any supported checkpoint -> a Hugging Face directory
(config.json, model.safetensors, vocab.txt), loadable by bertkit and transformers alike.

`bertkit convert RUN DST --task T` exports one task of a multi-task run: the shared encoder and
that task's head as a single-task run directory (a `BertForSequenceClassification` that
transformers loads with the task's labels, and a bertkit.json for evaluate/predict)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="TF checkpoint (prefix or directory with bert_model.ckpt.*), "
                                    "HF directory, hub id, or a multi-task run directory (with --task)")
    parser.add_argument("dst", help="output directory (created)")
    parser.add_argument("--from", dest="src_format", choices=("tf", "hf"), default=None,
                        help="source format; detected from the files when omitted")
    parser.add_argument("--task", default=None,
                        help="export this task of a multi-task run (its head and the shared encoder)")


def export_task(run_dir: str, task_name: str, dst: Path) -> Path:
    """One task of a multi-task run -> a single-task run directory at `dst`."""
    from bertkit.commands import common
    from bertkit.tasks import TaskOptions, get_task_class
    from bertkit.tasks.multitask import load_head_model
    from bertkit.tokenization import Tokenizer

    saved = common.read_run_info(run_dir)
    heads = saved.get("heads") or {}
    if not heads:
        raise ValueError(f"--task {task_name}: {Path(run_dir) / common.BERTKIT_JSON} describes no multi-task run "
                         f"(no 'heads'); --task exports one task of a multi-task run. A single-task run or "
                         f"checkpoint converts without --task")
    if task_name not in heads:
        raise ValueError(f"--task {task_name}: the run in {run_dir} has heads for "
                         f"{', '.join(saved.get('tasks') or heads)}")
    head = heads[task_name]
    task = get_task_class(task_name)(TaskOptions(max_seq_length=int(head.get("max_seq_length", 128)),
                                                 extra=dict(saved.get("extra") or {})))
    model = load_head_model(run_dir, task_name, task)
    model.save_pretrained(dst, tokenizer=Tokenizer.from_pretrained(run_dir))
    run_info = {
        "task": task_name, "tasks": [task_name], "head": head["head"], "labels": head.get("labels"),
        "max_seq_length": task.options.max_seq_length, "data_dir": saved.get("data_dir"),
        "extra": task.options.extra, "base_model": saved.get("base_model"), "train": saved.get("train"),
        "main_metric": head.get("main_metric", task.main_metric), "task_state": task.state_dict(),
        "exported_from": {"run": str(run_dir), "task": task_name, "tasks": saved.get("tasks")},
    }
    common.write_json_atomic(dst / common.BERTKIT_JSON, run_info)
    return dst


def run(args: argparse.Namespace) -> int:
    from bertkit.commands import common
    from bertkit.modeling.checkpoints import convert, model_info

    if Path(args.dst).exists() and any(Path(args.dst).iterdir()):
        raise ValueError(f"output directory {args.dst} is not empty; pass a new directory")
    if args.task is not None:
        dst = export_task(args.src, args.task, Path(args.dst))
    else:
        saved = common.read_run_info(args.src) if Path(args.src).is_dir() else {}
        if saved.get("heads"):
            # Its heads have no transformers class of their own; each task exports on its own.
            raise ValueError(f"{args.src} is a multi-task run ({', '.join(saved.get('tasks') or saved['heads'])}): pass --task T to export one "
                             f"task's model (the shared encoder with that task's head)")
        dst = convert(args.src, args.dst, src_format=args.src_format)
    info = model_info(dst)
    print(f"wrote {dst}: {', '.join(info['architectures'] or [])}, {info['layers']} layers, "
          f"hidden {info['hidden']}, {info['parameters']:,} parameters, heads: "
          f"{', '.join(info['heads_present']) or 'none'}")
    return 0
