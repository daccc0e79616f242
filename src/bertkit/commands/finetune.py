"""`bertkit finetune --task T --model M --data-dir D --output-dir O`: fine-tune, evaluate, keep the best.

Order of work, chosen so that bad input fails before anything is written: read and encode every
split first (errors name file and line), then create the run directory and train.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bertkit.commands import common


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    # NVIDIA's run_squad.py / run_glue.py take the weights from --init_checkpoint; their --bert_model only
    # names the feature-cache files (see common.add_nvidia_arguments).
    nvidia = common.nvidia_command_line(argv)
    model_flags = ("--model", "--init_checkpoint", "--model_name_or_path") + (() if nvidia else ("--bert_model",))
    parser.add_argument(*model_flags, dest="model", required=True,
                        help="checkpoint: a local directory (HF or Google TF), a TF checkpoint prefix "
                             "(DIR/bert_model.ckpt) or a hub id")
    # run_classifier.py names the checkpoint's vocabulary and config apart; see check_files_beside_model.
    parser.add_argument("--vocab_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bert_config_file", default=None, help=argparse.SUPPRESS)
    # run_squad.py's command lines name no task; their --train_file/--predict_file are SQuAD files.
    squad_script = not common.task_names_in(argv) and any(
        arg.split("=")[0] in ("--train_file", "--predict_file") for arg in argv)
    common.add_task_arguments(parser, argv, required=not squad_script,
                              implied_tasks=["squad"] if squad_script else None)
    if squad_script:
        parser.set_defaults(task=["squad"])
    common.add_train_arguments(parser)
    if nvidia:
        common.add_nvidia_arguments(parser)
        parser.set_defaults(max_steps_ends_early=True)  # their --max_steps: see common.script_steps
    # Which script's prediction file --do_predict also writes: transformers' run_glue.py names its model
    # --model_name_or_path; Google's run_classifier.py does not.
    hf_script = any(arg.split("=")[0] == "--model_name_or_path" for arg in argv)
    parser.set_defaults(script_file="run_glue" if hf_script else "run_classifier")
    parser.add_argument("--do_predict", nargs="?", const=True, default=False, type=common.parse_bool,
                        help="the BERT scripts' switch: after training (or alone: with --bert_model), write the "
                             "predictions for --predict_file (SQuAD) or the test split into --output_dir, in the "
                             "benchmark's format")
    parser.add_argument("--eval-split", default="dev", help="split evaluated during training")
    parser.add_argument("--task-sampling", choices=("proportional", "uniform", "temperature"),
                        default=None, help="multi-task: how tasks are sampled (default proportional)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="multi-task: T for --task-sampling temperature (default 2)")
    parser.add_argument("--task-batch-size", dest="task_batch_size", action="append", default=None,
                        metavar="TASK=N", help="multi-task: per-task batch size (repeatable)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "config_file", None) is not None:  # NVIDIA's: checkpoint, config and vocab apart
        if args.do_predict and args.task != ["squad"]:
            raise ValueError(f"--do_predict: NVIDIA's run_glue.py writes the dev split's labels as predictions.json "
                             f"(a JSON of its own); bertkit writes predictions in the benchmark's format: drop the "
                             f"flag and run `bertkit predict --task {args.task[0]} --model {args.output_dir} --data-dir "
                             f"{args.data_dir} --split dev --output FILE` after training")
        args.model_source = args.model
        args.model = common.nvidia_model(args.model, args.config_file, args.vocab_file)
    else:
        common.check_files_beside_model(args.model, vocab_file=args.vocab_file, config_file=args.bert_config_file)
    # Options that would otherwise do nothing without a word.
    if len(args.task) == 1:
        given = [flag for flag, value in (("--task-sampling", args.task_sampling), ("--temperature", args.temperature),
                                          ("--task-batch-size", args.task_batch_size)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: multi-task options; this run has one --task")
    elif args.temperature is not None and args.task_sampling != "temperature":
        raise ValueError(f"--temperature applies to --task-sampling temperature, not "
                         f"{args.task_sampling or 'proportional'} (the default)")
    args.task_sampling = args.task_sampling or "proportional"
    args.temperature = 2.0 if args.temperature is None else args.temperature
    if len(args.task) > 1:
        if args.do_predict:
            raise ValueError("--do_predict is the single-task scripts' switch; for a multi-task run, `bertkit "
                             "predict --task T --model RUN` writes each task's predictions")
        from bertkit.tasks import multitask

        return multitask.run_finetune(args)
    if (args.do_eval or args.do_predict) and not args.do_train:  # seed-script semantics: no training
        status = 0
        if args.do_eval:
            from bertkit.commands import evaluate

            status = evaluate.run(argparse.Namespace(**{**vars(args), "split": args.eval_split, "output": None,
                                                        "batch_size": args.eval_batch_size}))
        return status or (predict_like_the_scripts(args, args.model) if args.do_predict else 0)
    status = finetune_single(args)
    if status == 0 and args.do_predict:
        status = predict_like_the_scripts(args, args.output_dir)
    return status


def predict_like_the_scripts(args: argparse.Namespace, model: str) -> int:
    """--do_predict: the split those scripts predict (run_squad.py's --predict_file, here the dev split;
    else the test split, as run_classifier.py's), written into --output_dir under the benchmark's name
    (predictions.json with nbest_predictions.json, SST-2.tsv, ...)."""
    from bertkit.commands import predict
    from bertkit.tasks import get_task_class

    split = "dev" if args.dev_file else "test"
    name = getattr(get_task_class(args.task[0]), "submission_name", "")
    output = str(Path(args.output_dir) / name) if split == "dev" and name else args.output_dir.rstrip("/") + "/"
    return predict.run(argparse.Namespace(**{**vars(args), "model": model, "split": split, "output": output,
                                             "batch_size": args.eval_batch_size}))


def finetune_single(args: argparse.Namespace) -> int:
    from bertkit.tasks import get_task_class
    from bertkit.training import distributed
    from bertkit.training.trainer import apply_best_metric, seed_everything, train

    task_cls = get_task_class(args.task[0])
    config = common.train_config_from_args(args)
    info = distributed.setup(config.device)
    task = task_cls(common.task_options_from_args(args, task_cls))
    tokenizer = common.load_tokenizer(args.model, args.do_lower_case)
    max_len = task.options.max_seq_length

    train_examples = task.read("train")
    common.adopt_model_label_order(task, args.model)  # a classifier trained elsewhere keeps its classes' rows
    eval_examples = task.read(args.eval_split) if config.eval_every != "none" else None
    train_features = common.encode_cached(task, "train", train_examples, tokenizer, max_len, info)
    eval_set = None
    if eval_examples is not None:
        eval_set = (eval_examples, common.encode_cached(task, args.eval_split, eval_examples, tokenizer, max_len, info))

    # After the reads (MNLI's dev_mismatched sets its own main metric), before a finished run in
    # --output-dir is touched (a --best-metric no evaluation reports is refused).
    apply_best_metric(task, config, eval_set)

    output_dir = Path(config.output_dir)
    if (output_dir / common.BERTKIT_JSON).exists() and not config.resume and info.is_main:
        common.eprint(f"note: {output_dir} holds a finished run; it will be overwritten")
        (output_dir / common.BERTKIT_JSON).unlink()

    seed_everything(config.seed)  # head initialisation is part of the seeded run
    model = load_task_model(task, args.model)
    common.check_model_fits(model.config, tokenizer, max_len, args.model)
    run_info = {
        "task": task.name, "tasks": [task.name], "head": task.head, "labels": task.label_names(),
        "max_seq_length": max_len, "data_dir": task.options.data_dir, "extra": task.options.extra,
        "base_model": getattr(args, "model_source", args.model), "train": dataclasses.asdict(config), "main_metric": task.main_metric,
        "command": " ".join(["bertkit", *sys.argv[1:]]), "task_state": task.state_dict(),
    }

    save_model = common.model_saver(tokenizer, run_info)

    if info.is_main:
        common.eprint(f"{task.name}: {len(train_features)} training features, "
                      f"{len(eval_set[1]) if eval_set else 0} eval features; {config.precision} on {info.device}, "
                      f"global batch {config.batch_size} x {info.world_size} x {config.grad_accum}")
    result = train(task, model, train_features, eval_set, config, info=info, save_model=save_model)
    if info.is_main:
        metrics = {"task": task.name, "best_step": result.state.best_step, "steps": result.state.global_step,
                   "skipped_steps": result.state.skipped_steps, "history": result.state.history}
        if result.final_metrics is not None:  # None with --eval-every none: no evaluation ran
            metrics[args.eval_split] = result.final_metrics
        common.write_run_metrics(output_dir / "metrics.json", metrics, result.model_kept)
        # bertkit.json last: its presence marks a complete run directory.
        common.write_json_atomic(output_dir / common.BERTKIT_JSON, run_info)
        if result.final_metrics is not None:
            print(f"{task.name} {args.eval_split}: {result.final_metrics}")
        else:
            print(f"{task.name}: trained {result.state.global_step} steps, not evaluated (--eval-every none); "
                  f"`bertkit evaluate --model {output_dir}` scores it")
    distributed.shutdown()
    return 0


def load_task_model(task, model_path: str, new_head: bool = True):
    """The task's head model with encoder weights from `model_path`. new_head (fine-tuning): missing
    head weights are initialised, and so is a head of another size (a model fine-tuned on other
    labels); without it (evaluation, prediction) both are errors."""
    from bertkit.modeling.heads import model_class_for_head

    cls = model_class_for_head(task.head)
    return cls.from_pretrained(model_path, new_head_on_mismatch=new_head, require_head=not new_head,
                               **task.model_config_updates())
