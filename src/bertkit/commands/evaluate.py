"""`bertkit evaluate --task T --model RUN_DIR --data-dir D [--split dev]`: print and save metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bertkit.commands import common


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_model_and_data_arguments(parser, argv)
    parser.add_argument("--split", default="dev", help="which split to evaluate")
    parser.add_argument("--output", default=None,
                        help="metrics file the results are merged into (default: MODEL/metrics.json)")


def add_model_and_data_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    parser.add_argument("--model", "--bert_model", dest="model", required=True, help="fine-tuned run directory")
    common.add_task_arguments(parser, argv, required=False, implied_tasks=common.saved_task_names(argv))
    parser.add_argument("--batch-size", "--eval-batch-size", "--eval_batch_size", dest="batch_size", type=int,
                        default=128, help="examples per forward pass (finetune calls it --eval-batch-size)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no_cuda", "--no-cuda", dest="no_cuda", action="store_true", help="alias of --device cpu")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="accepted for old launchers; torchrun's LOCAL_RANK is what counts")


def load_for_inference(args: argparse.Namespace):
    """(task, model, tokenizer, info) for a fine-tuned run directory; the task, labels and options
    saved in bertkit.json are used unless the command line overrides them."""
    from bertkit.commands.finetune import load_task_model
    from bertkit.tasks import get_task_class
    from bertkit.training import distributed

    saved = common.read_run_info(args.model)
    if not args.task and len(saved.get("tasks") or []) > 1:
        # Scoring only the first task of a multi-task run would look like the whole result.
        raise ValueError(f"{args.model} is a multi-task run ({', '.join(saved['tasks'])}): name the task to "
                         f"evaluate or predict with --task, once per command")
    names = args.task or [saved.get("task")] if (args.task or saved.get("task")) else None
    if not names or names[0] is None:
        raise ValueError(f"--task is required: {args.model} has no {common.BERTKIT_JSON} naming its task")
    name = names[0]
    # AX is predicted with an MNLI model: same labels, its own reader.
    compatible = saved.get("task") in (None, name) or (name == "ax" and saved.get("task") == "mnli")
    if not compatible and name not in saved.get("tasks", []):
        raise ValueError(f"--task {name}: the model in {args.model} was fine-tuned for "
                         f"{', '.join(saved.get('tasks', [saved.get('task')]))}")
    task_cls = get_task_class(name)
    task = task_cls(common.task_options_from_args(args, task_cls, saved))
    if saved.get("task") == name and saved.get("task_state"):
        task.load_state_dict(saved["task_state"])
    heads = saved.get("heads", {})
    if name in heads:  # a multi-task model: this task's head and labels
        task.set_label_names(heads[name].get("labels"))
    elif saved.get("labels") is not None:
        task.set_label_names(saved["labels"])
    else:  # not a bertkit run: the model's config says which output is which class
        common.adopt_model_label_order(task, args.model)
    device_flag = "cpu" if getattr(args, "no_cuda", False) else args.device
    info = distributed.setup(device_flag)
    precision = args.precision or common.default_precision(device_flag)
    if name in heads:
        from bertkit.tasks.multitask import load_head_model

        model = load_head_model(args.model, name, task)
    else:
        model = load_task_model(task, args.model, new_head=False)  # a mismatch here is an error
    tokenizer = common.load_tokenizer(args.model, args.do_lower_case)
    common.check_model_fits(model.config, tokenizer, task.options.max_seq_length, args.model)
    return task, model.to(info.device).eval(), tokenizer, info, precision


def run(args: argparse.Namespace) -> int:
    from bertkit.training import distributed
    from bertkit.training.trainer import evaluate

    task, model, tokenizer, info, precision = load_for_inference(args)
    path = Path(args.output) if args.output else Path(args.model) / "metrics.json"
    existing = common.read_json(path) if path.is_file() else {}  # read first: a damaged file fails before the work
    examples = task.read(args.split)
    features = common.encode_cached(task, args.split, examples, tokenizer, task.options.max_seq_length, info)
    metrics, _ = evaluate(task, model, examples, features, args.batch_size, info.device, precision, info)
    if info.is_main:
        multi_task_run = len(common.read_run_info(args.model).get("tasks") or []) > 1
        key = metrics_key(existing, task.name, args.split, multi_task_run)
        existing[key] = metrics
        if key == args.split:
            existing.setdefault("task", task.name)
        scored = {flag: getattr(args, flag, None) for flag in ("data_dir", "train_file", "dev_file", "test_file")}
        existing.setdefault("evaluated", {})[key] = {"task": task.name, "split": args.split,
                                                     **{k: v for k, v in scored.items() if v}}
        common.write_metrics_atomic(path, existing)
        print(json.dumps({"task": task.name, "split": args.split, **metrics}, indent=2))
    distributed.shutdown()
    return 0


def metrics_key(existing: dict, task: str, split: str, multi_task_run: bool) -> str:
    """Where evaluate puts its metrics in a metrics.json that already holds `existing`: under the
    split in a single-task run's own file (the layout finetune writes: {"task": "rte", "dev": {...}}),
    else under "<task>/<split>": a multi-task run's "dev" holds the training's per-task and average
    metrics, and a file that holds another task's numbers keeps them."""
    if multi_task_run or "tasks" in existing or existing.get("task", task) != task:
        return f"{task}/{split}"
    return split
