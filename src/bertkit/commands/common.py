"""Flags shared by finetune / evaluate / predict / pretrain, and the run-directory files.

The flags of the original BERT scripts (google-research/bert, pytorch-pretrained-bert, the
seeds' run_classifier.py) are accepted as aliases of ours, so their command lines run unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

from bertkit.config import OPTIMIZERS, PRECISIONS, RESIDUAL_DTYPES, SCHEDULES, TrainConfig
from bertkit.tasks.base import Task, TaskOptions, get_task_class

BERTKIT_JSON = "bertkit.json"


def flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """The values of every one of `flags` in argv (before argparse runs)."""
    values = []
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                values.append(arg.split("=", 1)[1])
    return values


def task_names_in(argv: list[str]) -> list[str]:
    """The values of every --task/--task_name in argv (before argparse runs)."""
    return flag_values(argv, ("--task", "--task_name"))


def saved_task_names(argv: list[str]) -> list[str]:
    """The tasks a run directory given as --model was fine-tuned for (its bertkit.json), so that
    evaluate/predict accept those tasks' flags without a repeated --task."""
    names: list[str] = []
    for model in flag_values(argv, ("--model", "--bert_model")):
        try:
            info = read_run_info(model)
        except (OSError, ValueError):
            continue  # the command reports an unreadable run directory itself
        names += [n for n in info.get("tasks") or [info.get("task")] if isinstance(n, str)]
    return names


def normalize_task_name(name: str) -> str:
    return name.strip().lower()


def whole_number(text: str) -> int:
    """An int, also written as a float ("1.0"): NVIDIA's scripts declare --log_freq and --max_steps float."""
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_casing_arguments(parser: argparse.ArgumentParser, source: str) -> None:
    """--do_lower_case [BOOL] and --cased, one or neither: without them the tokenizer's own files
    decide. `--do_lower_case=False` is the spelling of Google's BERT README for cased models."""
    casing = parser.add_mutually_exclusive_group()
    casing.add_argument("--do_lower_case", "--do-lower-case", dest="do_lower_case", nargs="?", const=True,
                        default=None, type=parse_bool, metavar="BOOL",
                        help=f"lower-case the input (default: as {source} says)")
    casing.add_argument("--cased", "--nodo_lower_case", dest="do_lower_case", action="store_const", const=False,
                        help="keep case and accents, whatever the tokenizer's files say (a cased vocab); "
                             "--nodo_lower_case is absl's spelling in Google's scripts")


def add_task_arguments(parser: argparse.ArgumentParser, argv: list[str], required: bool = True,
                       implied_tasks: list[str] | None = None) -> None:
    from bertkit.tasks import TASKS  # imports every task file, so that all are listed

    parser.add_argument("--task", "--task_name", dest="task", action="append", required=required,
                        type=normalize_task_name,
                        help=f"task name (repeat for multi-task training): {', '.join(sorted(TASKS))}. `ax` is "
                             f"GLUE's diagnostic set, predicted with an MNLI run: `bertkit predict --task ax "
                             f"--model MNLI_RUN --data-dir glue_data --split test --output DIR/` writes AX.tsv")
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", help="the benchmark's data directory")
    parser.add_argument("--train-file", "--train_file", dest="train_file",
                        help="training file (overrides --data-dir layout)")
    # run_squad.py's --predict_file is the file it predicts and scores: the dev split here.
    parser.add_argument("--dev-file", "--predict_file", "--validation_file", dest="dev_file",
                        help="dev/validation file")
    parser.add_argument("--test-file", help="test file")
    parser.add_argument("--max-seq-length", "--max_seq_length", dest="max_seq_length", type=int, default=None,
                        help="tokens per sequence incl. [CLS]/[SEP] (default: the task's, usually 128)")
    add_casing_arguments(parser, "the checkpoint's tokenizer")
    seen: set[type[Task]] = set()
    for name in task_names_in(argv) + (implied_tasks or []):
        try:
            cls = get_task_class(normalize_task_name(name))
        except ValueError:
            continue  # argparse reports the unknown task with the valid names later
        if cls not in seen:
            seen.add(cls)
            cls.add_arguments(parser)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True, help="run directory")
    g.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=float, default=d.epochs)
    g.add_argument("--max-steps", "--num_train_steps", dest="max_steps", type=int, default=d.max_steps,
                   help="optimizer steps (overrides --epochs)")
    # transformers' and NVIDIA's spelling, whose default -1 (also "-1.0") means: train --num_train_epochs.
    # NVIDIA's run_squad.py and run_glue.py read it as an early stop (see script_steps).
    g.add_argument("--max_steps", dest="script_max_steps", type=whole_number, default=None, help=argparse.SUPPRESS)
    g.add_argument("--stop-at-step", dest="stop_at_step", type=int, default=d.stop_at_step, metavar="N",
                   help="end the run after optimizer step N, the learning rate still following the schedule of "
                        "the whole --max-steps / --epochs run (0: at its end)")
    g.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=d.lr)
    g.add_argument("--batch-size", "--per_device_train_batch_size", dest="batch_size", type=int, default=None,
                   help=f"examples per device per micro-step (default {d.batch_size})")
    g.add_argument("--train_batch_size", dest="step_batch_size", type=int, default=None,
                   help="the BERT scripts' batch, as they read it: examples per optimizer step per process, "
                        "split into --gradient_accumulation_steps micro-batches")
    g.add_argument("--eval-batch-size", "--eval_batch_size", "--predict_batch_size", "--per_device_eval_batch_size",
                   dest="eval_batch_size", type=int,
                   default=d.eval_batch_size)
    g.add_argument("--grad-accum", "--gradient_accumulation_steps", dest="grad_accum", type=int, default=d.grad_accum)
    g.add_argument("--warmup-ratio", "--warmup_proportion", "--warmup_ratio", dest="warmup_ratio", type=float, default=d.warmup_ratio)
    g.add_argument("--warmup-steps", "--num_warmup_steps", "--warmup_steps", dest="warmup_steps", type=int, default=d.warmup_steps)
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                   help="after warmup (default linear); poly is NVIDIA's run_pretraining.py decay, (1 - step/total)^0.5")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=d.weight_decay)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw (default); lamb (large-batch pre-training); bertadam: the original BERT scripts' Adam "
                        "without bias correction, to reproduce their runs")
    g.add_argument("--max-grad-norm", "--max_grad_norm", dest="max_grad_norm", type=float, default=d.max_grad_norm)
    g.add_argument("--clip-per-tensor", action="store_true",
                   help="clip each weight tensor's gradient to --max-grad-norm on its own instead of the global norm, "
                        "as pytorch-pretrained-bert's BertAdam does (with --optimizer bertadam, to reproduce its runs)")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: bf16 on GPUs that support it, else fp32")
    g.add_argument("--fp16", "--amp", dest="fp16", action="store_true",
                   help="alias of --precision fp16 (seed scripts; --amp: NVIDIA's)")
    g.add_argument("--bf16", action="store_true", help="alias of --precision bf16 (transformers' Trainer scripts)")
    # pytorch-pretrained-bert's --loss_scale: 0 is its dynamic scaling, which --precision fp16 always uses.
    g.add_argument("--loss_scale", type=float, default=None, help=argparse.SUPPRESS)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--eval-every", default=None,
                   help=f"'epoch', a step count, 'end' (once, after the last step: the last model is the run's) or "
                        f"'none' (default {d.eval_every}; with the BERT scripts' --do_train: 'end' with --do_eval, "
                        f"else 'none')")
    g.add_argument("--save-every", "--save_checkpoints_steps", "--save_steps", "--num_steps_per_checkpoint", dest="save_every", type=int, default=d.save_every,
                   help="checkpoint every N steps")
    # Google's TPU switches: --use_tpu=False (what GPU and CPU command lines pass) is accepted, True refused.
    g.add_argument("--use_tpu", nargs="?", const=True, default=False, type=parse_bool, help=argparse.SUPPRESS)
    g.add_argument("--keep-checkpoints", "--save_total_limit", dest="keep_checkpoints", type=int,
                   default=d.keep_checkpoints)
    g.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience, metavar="N",
                   help="end the run after N evaluations in a row without a better main metric (the best model "
                        "is kept as usual; 0: never)")
    g.add_argument("--keep-last", dest="keep_best", action="store_false",
                   help="the run directory gets the last model, not the best evaluated one (evaluations are still "
                        "run and logged)")
    # transformers' Trainer: --eval_strategy epoch|steps keeps the last model unless --load_best_model_at_end.
    g.add_argument("--eval_strategy", "--evaluation_strategy", dest="trainer_eval_strategy", default=None,
                   choices=("no", "steps", "epoch"), help=argparse.SUPPRESS)
    g.add_argument("--eval_steps", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--load_best_model_at_end", nargs="?", const=True, default=False, type=parse_bool,
                   help=argparse.SUPPRESS)
    g.add_argument("--metric_for_best_model", default=None, help=argparse.SUPPRESS)
    g.add_argument("--best-metric", default=d.best_metric, metavar="NAME",
                   help="the dev metric that picks the best model and counts for --early-stopping-patience, a key "
                        "of the evaluation's metrics (`loss`, `accuracy`, `spearman`, `exact_match`, `mrpc/f1` ...; "
                        "lower is better for names ending in loss or perplexity); default: the task's main metric")
    g.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    g.add_argument("--overwrite-output-dir", "--overwrite_output_dir", dest="overwrite_output_dir",
                   action="store_true",
                   help="start afresh in an --output-dir that holds an earlier run's checkpoints (deletes them)")
    g.add_argument("--group-by-length", action="store_true", help="batch examples of similar length")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--no_cuda", "--no-cuda", dest="no_cuda", action="store_true", help="alias of --device cpu")
    g.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the model; MODE reduce-overhead also replays the step as CUDA graphs "
                        "(worth it when kernel launches dominate: short sequences, small batches)")
    g.add_argument("--attn-backend", default=d.attn_backend,
                   help="attention path: auto (default) | padded | unpadded | varlen | varlen_dropout | "
                        "sdpa_unpadded | flex; varlen_dropout trains with attention dropout on the flash "
                        "varlen kernel (CUDA, bf16/fp16) instead of re-padding for SDPA in every layer")
    g.add_argument("--residual-dtype", choices=RESIDUAL_DTYPES, default=d.residual_dtype,
                   help="dtype of the hidden states between sublayers under --precision bf16: fp32 (default, "
                        "as transformers) or bf16 (half the bytes in the dropout/residual/LayerNorm kernels "
                        "and their gradients; LayerNorm still computes in fp32)")
    g.add_argument("--attention-dropout", type=float, default=None, metavar="P",
                   help="set the model's attention_probs_dropout_prob (saved with the model); 0 lets "
                        "the unpadded path use the flash varlen kernel with no re-padding")
    g.add_argument("--fsdp", action="store_true",
                   help="shard the model across processes (FSDP2; torchrun with >= 2 processes)")
    g.add_argument("--num-workers", "--dataloader_num_workers", "--num_workers", dest="num_workers", type=int, default=d.num_workers,
                   help="DataLoader worker processes (default: on CUDA half the CPU cores, at most 4; 0 on CPU)")
    g.add_argument("--log-every", "--logging_steps", "--log_freq", dest="log_every", type=whole_number,
                   default=d.log_every)
    g.add_argument("--no-progress", "--disable_progress_bar", "--disable-progress-bar", dest="progress",
                   action="store_false")
    # Seed-script switches (Google's scripts spell them --do_train=true): --do_eval alone evaluates the
    # model; --do_train trains and, as there, scores only the final model, with --do_eval (see
    # seed_script_eval_every).
    g.add_argument("--do_train", nargs="?", const=True, default=False, type=parse_bool, help=argparse.SUPPRESS)
    g.add_argument("--do_eval", nargs="?", const=True, default=False, type=parse_bool, help=argparse.SUPPRESS)
    g.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="accepted for old launchers; torchrun's LOCAL_RANK is what counts")


# ---- NVIDIA DeepLearningExamples' PyTorch BERT scripts ---------------------------------------------------
def nvidia_command_line(argv: list[str]) -> bool:
    """A command line of NVIDIA's run_pretraining.py, run_squad.py or run_glue.py: all three require
    --config_file (run_pretraining.py also --input_dir), which no other script bertkit reads has."""
    return any(arg.split("=", 1)[0] in ("--config_file", "--input_dir") for arg in argv)


# Flags of NVIDIA's scripts that change how fast, or in how much memory, a step runs (or what is
# printed), not what it computes; bertkit accepts them and does what it always does.
NVIDIA_NO_EFFECT = {
    "--use_env": "LOCAL_RANK is read from the environment anyway (torchrun)",
    "--allreduce_post_accumulation": "gradients are reduced once per optimizer step anyway",
    "--allreduce_post_accumulation_fp16": "fp16 gradient reduction; bertkit reduces them in fp32",
    "--checkpoint_activations": "recomputation saves memory, not results; lower the micro-batch if memory runs out",
    "--no_dense_sequence_output": "a speed switch of their MLM head",
    "--disable_jit_fusions": "a speed switch of their TorchScript fusions",
    "--cuda_graphs": "a speed switch (bertkit's: --compile reduce-overhead)",
    "--skip_cache": "bertkit's feature cache is keyed by content and cannot be stale",
    "--eval_script": "bertkit scores SQuAD with the official metric itself",
    "--cache_dir": "bertkit caches features under $BERTKIT_CACHE",
}


def add_nvidia_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags NVIDIA's three scripts share beyond those of Google's and the Trainer's."""
    g = parser.add_argument_group("NVIDIA DeepLearningExamples' scripts")
    g.add_argument("--config_file", required=True,
                   help="bert_config.json: of --init_checkpoint (which NVIDIA keeps apart from its config and "
                        "vocab), or of the model to pre-train from scratch")
    # Their --bert_model names the model in feature-cache file names; the weights are --init_checkpoint's.
    g.add_argument("--bert_model", dest="nvidia_model_name", default=None, help=argparse.SUPPRESS)
    g.add_argument("--json-summary", dest="json_summary", default=None, help=argparse.SUPPRESS)
    g.add_argument("--skip_checkpoint", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--init_loss_scale", type=float, default=None, help=argparse.SUPPRESS)
    for flag, reason in NVIDIA_NO_EFFECT.items():
        takes_value = flag in ("--eval_script", "--cache_dir")
        g.add_argument(flag, dest=f"nvidia_{flag[2:]}", help=f"accepted, no effect: {reason}",
                       **({"default": None} if takes_value else {"action": "store_true"}))


def nvidia_notes(args: argparse.Namespace) -> None:
    """What bertkit does instead of the NVIDIA flags that name files it does not write."""
    if getattr(args, "json_summary", None):
        eprint(f"note: --json-summary {args.json_summary}: bertkit logs to {Path(args.output_dir) / 'log.jsonl'} "
               f"and writes metrics.json there")
    if getattr(args, "skip_checkpoint", False):
        eprint("note: --skip_checkpoint: bertkit still writes the final model into --output_dir (and its resume "
               "checkpoints); delete them if they are not wanted")
    if getattr(args, "init_loss_scale", None):
        eprint(f"note: --init_loss_scale {args.init_loss_scale:g}: bertkit's fp16 loss scale starts at 2^16 and "
               f"adapts dynamically")


def nvidia_model(checkpoint: str, config_file: str, vocab_file: str | None) -> str:
    """NVIDIA's scripts name a checkpoint (`torch.save({"model": state_dict, ...}, "ckpt_N.pt")`), its
    bert_config.json and its vocab as three flags; bertkit reads a model directory. For a checkpoint
    file, a temporary directory of links to the three is that directory (removed at exit); a
    directory checkpoint must hold the two files itself, as for Google's flags."""
    import atexit
    import shutil

    path = Path(checkpoint)
    if path.is_dir() or not path.is_file():
        check_files_beside_model(checkpoint, vocab_file, config_file, config_flag="--config_file")
        return checkpoint
    if vocab_file is None:
        raise ValueError(f"{checkpoint} holds weights only (NVIDIA keeps the vocabulary apart): give its vocab.txt "
                         f"as --vocab_file")
    for flag, given in (("--config_file", config_file), ("--vocab_file", vocab_file)):
        if not Path(given).is_file():
            raise FileNotFoundError(f"{flag} {given}: no such file")
    directory = Path(tempfile.mkdtemp(prefix="bertkit-nvidia-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    (directory / "config.json").symlink_to(Path(config_file).resolve())
    (directory / "pytorch_model.bin").symlink_to(path.resolve())
    (directory / "vocab.txt").symlink_to(Path(vocab_file).resolve())
    return str(directory)


def default_precision(device_flag: str) -> str:
    import torch

    if device_flag != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def seed_script_eval_every(args: argparse.Namespace) -> str:
    """--eval-every, or for a command line of the BERT scripts (--do_train) their protocol: train, then
    score the final model once with --do_eval ('end'), or not at all ('none'). bertkit's own default
    (every epoch, the best epoch's model kept) would report a model those scripts never score."""
    if args.eval_every is not None:
        return args.eval_every
    strategy = getattr(args, "trainer_eval_strategy", None)
    if strategy == "epoch":
        return "epoch"
    if strategy == "steps":
        if not args.eval_steps:
            raise ValueError("--eval_strategy steps: give --eval_steps N (bertkit's --eval-every N)")
        return str(args.eval_steps)
    if getattr(args, "do_train", False):
        return "end" if getattr(args, "do_eval", False) else "none"
    return TrainConfig.eval_every


def micro_batch_size(args: argparse.Namespace) -> int:
    """--batch-size is one micro-batch. --train_batch_size is read as pytorch-pretrained-bert's and
    NVIDIA's scripts read it, the examples of a whole optimizer step, split into
    --gradient_accumulation_steps micro-batches (their `train_batch_size // gradient_accumulation_steps`):
    taken as the micro-batch, their command lines would train with k times their batch and 1/k of
    their steps, without a word."""
    step_batch = getattr(args, "step_batch_size", None)
    if step_batch is None:
        return args.batch_size if args.batch_size is not None else TrainConfig.batch_size
    if args.batch_size is not None:
        raise ValueError(f"--batch-size {args.batch_size} (examples per micro-step) and --train_batch_size "
                         f"{step_batch} (examples per optimizer step, as the BERT scripts read it) are both given; "
                         f"pass one of them")
    accum = args.grad_accum
    if step_batch < 1 or accum < 1 or step_batch % accum:
        raise ValueError(f"--train_batch_size {step_batch} is the examples of one optimizer step (as in the BERT "
                         f"scripts), split into --gradient_accumulation_steps {accum} micro-batches: it must be a "
                         f"positive multiple of {accum}")
    return step_batch // accum


def script_steps(args: argparse.Namespace) -> dict[str, int]:
    """The scripts' --max_steps N (N <= 0: unset, their default -1). For transformers' Trainer and
    NVIDIA's run_pretraining.py it is the run's length, bertkit's --max-steps. NVIDIA's run_squad.py
    and run_glue.py build the schedule from --num_train_epochs and only leave their loops once
    `global_step > max_steps`: N + 1 optimizer steps of the epochs' schedule (--stop-at-step N+1)."""
    steps = getattr(args, "script_max_steps", None)
    if steps is None or steps <= 0:
        return {}
    if getattr(args, "max_steps_ends_early", False):
        return {"stop_at_step": steps + 1}
    if args.max_steps:
        raise ValueError(f"--max_steps {steps} and --max-steps {args.max_steps} are both given; pass one")
    return {"max_steps": steps}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    if getattr(args, "use_tpu", False):
        raise ValueError("--use_tpu: bertkit trains on GPUs (torchrun for several) and CPUs, not TPUs; drop the flag "
                         "or pass --use_tpu=False")
    if getattr(args, "loss_scale", None):
        eprint(f"note: --loss_scale {args.loss_scale:g}: bertkit's fp16 scales the loss dynamically (the scripts' "
               f"--loss_scale 0); a fixed scale is not used")
    device = "cpu" if getattr(args, "no_cuda", False) else args.device
    if getattr(args, "bf16", False) and args.fp16:
        raise ValueError("--bf16 and --fp16 are both given; pass one (or --precision)")
    precision = args.precision or ("fp16" if args.fp16 else "bf16" if getattr(args, "bf16", False)
                                   else default_precision(device))
    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    fields.update(device=device, precision=precision, batch_size=micro_batch_size(args),
                  eval_every=seed_script_eval_every(args), **script_steps(args))
    nvidia_notes(args)
    if getattr(args, "trainer_eval_strategy", None) in ("epoch", "steps"):
        # The Trainer keeps its last model unless told to load the best one at the end.
        fields["keep_best"] = bool(args.load_best_model_at_end) and args.keep_best
    if getattr(args, "metric_for_best_model", None) and not fields.get("best_metric"):
        fields["best_metric"] = args.metric_for_best_model.removeprefix("eval_")  # the Trainer's eval_accuracy
    compile_mode = getattr(args, "compile", None)
    fields.update(compile=compile_mode is not None, compile_mode=compile_mode or "default")
    config = TrainConfig(**fields)
    from bertkit.training.trainer import check_output_dir

    found = check_output_dir(config)  # before data is read or anything of an earlier run is touched
    check_output_dir_is_a_run(Path(config.output_dir), config.overwrite_output_dir)
    finished = (Path(config.output_dir) / BERTKIT_JSON).is_file()
    if config.resume and not found and finished:
        # Starting afresh here would overwrite the finished run that --resume was meant to keep.
        raise ValueError(f"--resume: {config.output_dir} holds a finished run ({BERTKIT_JSON}) and no checkpoint "
                         f"to continue from; train longer into a new --output-dir, or pass --overwrite-output-dir "
                         f"without --resume to train this one again")
    if finished and not found and not config.resume and not config.overwrite_output_dir:
        # With checkpoints, check_output_dir has refused already; without (deleted to free space), a
        # fresh run would replace the finished run's model and metrics.
        raise ValueError(f"--output-dir {config.output_dir} holds a finished run ({BERTKIT_JSON}); pick a new "
                         f"--output-dir, or pass --overwrite-output-dir to replace it")
    return config


# What a training run writes first (log.jsonl, at its start) or keeps (checkpoints, bertkit.json).
RUN_MARKERS = (BERTKIT_JSON, "log.jsonl", "checkpoints")


def check_output_dir_is_a_run(output_dir: Path, overwrite: bool) -> None:
    """Refuse an --output-dir that holds files but no training run (a data or records directory
    given by mistake): the run's config.json, model and tokenizer files would be written among them,
    and over any of the same name."""
    if not output_dir.is_dir() or overwrite or any((output_dir / name).exists() for name in RUN_MARKERS):
        return
    held = sorted(p.name for p in output_dir.iterdir())
    if held:
        raise ValueError(f"--output-dir {output_dir} is not empty and holds no bertkit run (it holds "
                         f"{', '.join(held[:5])}{' ...' if len(held) > 5 else ''}); give a new or empty "
                         f"directory, or --overwrite-output-dir to write the run among these files")


def task_options_from_args(args: argparse.Namespace, task_cls: type[Task], saved: dict | None = None) -> TaskOptions:
    """TaskOptions from the command line; values saved with a fine-tuned model fill the gaps."""
    saved = saved or {}
    extra = dict(saved.get("extra", {}))
    probe = argparse.ArgumentParser(add_help=False)
    task_cls.add_arguments(probe)
    for action in probe._actions:
        if hasattr(args, action.dest):
            value = getattr(args, action.dest)
            if value != action.default or action.dest not in extra:
                extra[action.dest] = value
    max_len = args.max_seq_length or saved.get("max_seq_length") or getattr(task_cls, "default_max_seq_length", 128)
    return TaskOptions(data_dir=args.data_dir or saved.get("data_dir"), train_file=args.train_file,
                       dev_file=args.dev_file, test_file=args.test_file, max_seq_length=max_len, extra=extra)


def check_files_beside_model(model: str, vocab_file: str | None, config_file: str | None,
                             config_flag: str = "--bert_config_file") -> None:
    """google-research/bert's run_classifier.py takes the vocabulary and config of --init_checkpoint as
    flags of their own (--vocab_file, --bert_config_file). bertkit reads the files beside the
    checkpoint, where Google's downloads keep them, so its command line runs unchanged; a named file
    that is not the one bertkit would read is refused rather than ignored."""
    where = Path(model) if Path(model).is_dir() else Path(model).parent
    for flag, given, names in (("--vocab_file", vocab_file, ("vocab.txt",)),
                               (config_flag, config_file, ("config.json", "bert_config.json"))):
        if given is None:
            continue
        if not Path(given).is_file():
            raise FileNotFoundError(f"{flag} {given}: no such file")
        beside = next((where / name for name in names if (where / name).is_file()), None)
        if beside is None or Path(given).read_bytes() != beside.read_bytes():
            found = f"{beside} differs from it" if beside is not None else f"{where} holds no {names[0]}"
            raise ValueError(f"{flag} {given}: bertkit reads the {names[0]} beside the checkpoint ({model}), and "
                             f"{found}; put the checkpoint, its {names[0]} and vocab.txt in one directory, as "
                             f"Google's downloads are, and pass that checkpoint")


def load_tokenizer(model_path: str, do_lower_case: bool | None):
    """The tokenizer of --model (its directory, the vocab beside a TF checkpoint, or a hub id)."""
    from bertkit.tokenization import Tokenizer

    try:
        return Tokenizer.from_pretrained(model_path, do_lower_case=do_lower_case)
    except FileNotFoundError as err:
        if Path(model_path).exists():
            raise
        # The tokenizer is read first, so a mistyped --model was reported as a "tokenizer path".
        forms = "give a model directory, a Google TF checkpoint prefix (DIR/bert_model.ckpt) or a hub id"
        if "Hugging Face hub" in str(err):  # it has a hub id's form: say why the download failed
            raise FileNotFoundError(f"--model {model_path} is not a local path ({forms}), and as a hub id: "
                                    f"{err}") from None
        raise FileNotFoundError(f"--model {model_path} does not exist: {forms} ('name' or 'org/name')") from None


def adopt_model_label_order(task: Any, model_path: str) -> None:
    """A classifier fine-tuned elsewhere says in config.json's id2label which class each output
    row is, and its order need not be bertkit's: transformers' run_glue orders MNLI entailment,
    neutral, contradiction, where bertkit (as Google's BERT) has contradiction, entailment,
    neutral. Read in bertkit's order, its predictions were silently given the wrong names. When
    the model names exactly the task's labels, the task takes the model's order."""
    from bertkit.modeling import checkpoints

    labels = task.label_names()
    if not labels:
        return
    try:
        config = checkpoints.read_config(checkpoints.resolve_model_path(model_path))
    except (OSError, ValueError):
        return  # loading the model reports it
    names = [config.id2label.get(i) for i in range(len(config.id2label))] if config.id2label else []
    if names != list(labels) and sorted(map(str, names)) == sorted(labels):
        eprint(f"note: {model_path} orders its classes {', '.join(names)} (config.json id2label), not as "
               f"bertkit's {task.name} does ({', '.join(labels)}); its order is used")
        task.set_label_names(names)


def check_model_fits(config, tokenizer, max_seq_length: int, model_path: str) -> None:
    """Refuse, before anything is written, a tokenizer or --max-seq-length that the model's
    embeddings cannot take. Unchecked, they fail at the first batch that holds a token id past the
    word embeddings (an IndexError deep in the embedding on CPU, a device assert on CUDA) or a row
    past the position embeddings: minutes into training, or only in `predict` on a longer test set."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"--model {model_path}: its tokenizer has {tokenizer.vocab_size} tokens but the model has "
                         f"vocab_size={config.vocab_size} word embeddings; the tokenizer files do not belong to "
                         f"these weights")
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max-seq-length {max_seq_length} is longer than the model's "
                         f"max_position_embeddings={config.max_position_embeddings} ({model_path}); use "
                         f"--max-seq-length {config.max_position_embeddings} or less")


# ---- feature cache ------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit")) / "features"


def _encoder_sources(task: Task) -> list[Path]:
    """The files whose code decides a task's features: the task's module (and its bases') and the
    tokenizer's."""
    import inspect

    import bertkit.tokenization

    files = {Path(bertkit.tokenization.__file__)}
    for cls in type(task).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and module.__name__.startswith("bertkit.") and getattr(module, "__file__", None):
            files.add(Path(inspect.getsourcefile(module) or module.__file__))
    return sorted(files)


def encode_cached(task: Task, split: str, examples: list, tokenizer, max_len: int, info=None) -> list[dict]:
    """task.encode, cached on disk keyed by the split's files, the tokenizer, the length and the
    task options: the second run (and every other rank) reads the cache instead of tokenizing."""
    from bertkit.training import distributed

    # Keyed on the examples themselves (not file names or times): any change to the data, the
    # tokenizer, the length or a task option gives a new key. Hashing repr() of 67k SST-2
    # examples takes ~50 ms, far less than tokenizing them again.
    # The tokenizer enters with every setting that changes its output, and the encoding code by
    # the bytes of its source files, so that a changed encoder never reads stale features. The
    # task's learned state enters too: polyphone features carry each character's candidate
    # readings, taken from the training data and dictionary, not from the split being encoded.
    key = hashlib.sha256()
    tokenizer_settings = {name: getattr(tokenizer, name, None) for name in
                          ("vocab_hash", "do_lower_case", "strip_accents", "tokenize_chinese_chars")}
    for part in (task.name, split, str(max_len), json.dumps(tokenizer_settings, sort_keys=True),
                 json.dumps(task.options.extra, sort_keys=True, default=str), json.dumps(task.label_names()),
                 json.dumps(task.state_dict(), sort_keys=True, default=str)):
        key.update(part.encode() + b"\0")
    for source in _encoder_sources(task):
        key.update(source.read_bytes())
    for example in examples:
        key.update(repr(example).encode())
    path = cache_dir() / f"{task.name}-{split}-{key.hexdigest()[:24]}.pkl"
    info = info or distributed.DistInfo()
    with distributed.main_process_first(info):
        if path.is_file():
            try:
                return pickle.loads(path.read_bytes())
            except Exception:
                pass  # a damaged cache file is rebuilt below
        features = task.encode(examples, tokenizer, max_len)
        if info.is_local_main:  # one writer per machine; on a shared disk the renames replace alike files
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(features, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        return features


# ---- run directory ------------------------------------------------------------------------------
def read_run_info(model_dir: str) -> dict[str, Any]:
    path = Path(model_dir) / BERTKIT_JSON
    return read_json(path) if path.is_file() else {}


def read_json(path: Path) -> Any:
    """A JSON file of a run directory (bertkit.json, metrics.json). A damaged one raised a bare
    "Expecting ',' delimiter: line 2 column 1" that named no file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); was it cut short or edited by "
                         f"hand?") from None


def model_saver(tokenizer: Any, run_info: dict[str, Any]):
    """The trainer's `save_model(model, directory, weights=True)`: HF-format weights and tokenizer,
    plus the run description as bertkit.json. weights=False (a training checkpoint) writes all but
    the weights, so that the checkpoint with its model.pt is a model directory too."""

    def save_model(model: Any, directory: Path, weights: bool = True) -> None:
        model.save_pretrained(directory, tokenizer=tokenizer, weights=weights)
        write_json_atomic(Path(directory) / BERTKIT_JSON, run_info)

    return save_model


def write_run_metrics(path: Path, metrics: dict[str, Any], model_kept: bool) -> None:
    """Write a training run's metrics.json. When the run left the directory's model as it was (a
    finished run resumed again), the entries `evaluate` had merged in still describe that model
    and stay, except where the training wrote the same key anew."""
    if model_kept and path.is_file():
        earlier = read_json(path)
        evaluated = {k: v for k, v in (earlier.get("evaluated") or {}).items() if k not in metrics and k in earlier}
        metrics = {**metrics, **{k: earlier[k] for k in evaluated}}
        if evaluated:
            metrics["evaluated"] = evaluated
    write_metrics_atomic(path, metrics)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_metrics_atomic(path: Path, metrics: Any) -> None:
    """metrics.json as strict JSON: a NaN or infinite value (a metric undefined on a degenerate
    model) is written as null, since Python's bare NaN/Infinity is rejected by jq, JavaScript and
    other standard parsers."""
    write_json_atomic(path, finite_or_null(metrics))


def finite_or_null(data: Any) -> Any:
    """`data` (nested dicts/lists) with every NaN or +-inf float replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(value) for value in data]
    return data


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)
