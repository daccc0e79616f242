"""`bertkit pretrain --data R (--model M | --config PRESET --tokenizer V) --output-dir O`: MLM(+NSP)
pre-training from scratch, or continued pre-training (domain adaptation) of a checkpoint.

Order of work, so that bad input fails before anything is written or trained: open the records
(bertkit records are checksummed shard by shard, TFRecord CRCs are checked on open), load the
tokenizer, refuse records made with another vocabulary, build the model, then train on the shared
loop (`bertkit.training.trainer.train`) with a `PretrainingTask`.

The output directory is a Hugging Face-format checkpoint with the pre-training heads
(`BertForPreTraining`: loads in transformers.BertForPreTraining and BertForMaskedLM) and the
tokenizer files, so `bertkit finetune --model O` takes it directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from bertkit.commands import common
from bertkit.tasks.base import DataError


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    nvidia = common.nvidia_command_line(argv)
    parser.add_argument("--data", "--input_file", "--pregenerated_data", "--input_dir", dest="data", required=True,
                        help="bertkit record directory (pretrain-data), TFRecord file/glob or HDF5 shards")
    # NVIDIA's run_pretraining.py reads --init_checkpoint only to resume (see nvidia_checkpoint_flags), and
    # its --bert_model is a name it never uses.
    model_flags = ("--model",) if nvidia else ("--model", "--bert_model", "--init_checkpoint")
    parser.add_argument(*model_flags, dest="model",
                        help="continue pre-training this checkpoint (directory, TF checkpoint prefix or hub id)")
    parser.add_argument("--config", "--bert_config_file", dest="config",
                        help="pre-train from scratch: tiny|mini|small|medium|base|large or a config.json (with "
                             "--model only as run_pretraining.py passes it: the config beside the checkpoint)")
    # run_pretraining.py states the records' shape; the records fix it, so these are checked against them.
    parser.add_argument("--max_seq_length", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max_predictions_per_seq", type=int, default=None, help=argparse.SUPPRESS)
    # finetune_on_pregenerated.py's switch: records are memory-mapped, never loaded whole.
    parser.add_argument("--reduce_memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", "--vocab_file", dest="tokenizer", default=None,
                        help="with --config: vocab.txt or tokenizer directory (default: the one saved "
                             "with bertkit records)")
    common.add_casing_arguments(parser, "the tokenizer")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--eval-data", default=None, help="held-out records (same formats as --data)")
    held.add_argument("--eval-fraction", type=float, default=0.01,
                      help="hold out about this fraction of --data for evaluation, as whole documents "
                           "(default 0.01; 0: no eval)")
    parser.add_argument("--masking", choices=("static", "dynamic"), default=None,
                        help="static: the stored masks; dynamic: new masks every batch (default: as the "
                             "records were built)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the sha256 check of every shard before training")
    common.add_train_arguments(parser)
    if nvidia:
        add_nvidia_arguments(parser)


def add_nvidia_arguments(parser: argparse.ArgumentParser) -> None:
    """run_pretraining.py's own flags. Its optimizer and schedule are fixed in its code, not flags:
    LAMB with the square-root polynomial decay; an explicit --optimizer / --schedule still wins."""
    common.add_nvidia_arguments(parser)
    # It evaluates nothing, so it trains on every record: none is held out unless asked.
    parser.set_defaults(optimizer="lamb", schedule="poly", eval_fraction=0.0)
    g = parser.add_argument_group("run_pretraining.py")
    g.add_argument("--init_checkpoint", dest="nvidia_init_checkpoint", default=None, help=argparse.SUPPRESS)
    g.add_argument("--resume_from_checkpoint", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--resume_step", type=int, default=-1, help=argparse.SUPPRESS)
    # Alone, --phase2 and --phase1_end_step only number the checkpoint files.
    g.add_argument("--phase2", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--phase1_end_step", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--steps_this_run", type=int, default=-1, help=argparse.SUPPRESS)
    g.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--profile-start", dest="profile_start", type=int, default=None, help=argparse.SUPPRESS)


def nvidia_checkpoint_flags(args: argparse.Namespace) -> None:
    """run_pretraining.py's checkpoint flags in bertkit's terms. Its --init_checkpoint is read only with
    --resume_from_checkpoint, and then (as --phase2 with the output directory's last ckpt_N.pt) it
    starts a new schedule from that checkpoint's weights *and* LAMB moments; without it, the script
    trains from scratch from --config_file and never opens the file."""
    if args.profile or args.profile_start is not None:
        raise ValueError("--profile: bertkit has no profiler switch; run the command under nsys or torch.profiler")
    init = args.nvidia_init_checkpoint
    if args.resume_from_checkpoint:
        if init or args.phase2:
            raise ValueError(f"--resume_from_checkpoint with {f'--init_checkpoint {init}' if init else '--phase2'}: "
                             f"run_pretraining.py starts a new schedule from a checkpoint's weights and LAMB moments; "
                             f"bertkit cannot read NVIDIA's optimizer state. Start from the weights alone: --model "
                             f"CHECKPOINT (a ckpt_N.pt, or phase 1's bertkit run directory) with a new --output_dir")
        if args.resume_step >= 0:
            raise ValueError(f"--resume_step {args.resume_step}: bertkit resumes from the latest checkpoint in "
                             f"--output_dir; drop the flag")
        held = sorted(p.name for p in Path(args.output_dir).glob("ckpt_*.pt"))
        if held and not (Path(args.output_dir) / "checkpoints").is_dir():
            raise ValueError(f"--resume_from_checkpoint: {args.output_dir} holds run_pretraining.py's checkpoints "
                             f"({', '.join(held[-2:])}), which bertkit cannot resume (their optimizer state is "
                             f"NVIDIA's); start from the weights: --model {Path(args.output_dir) / held[-1]} with a "
                             f"new --output_dir")
        args.resume = True
    elif init:
        raise ValueError(f"--init_checkpoint {init} without --resume_from_checkpoint: run_pretraining.py does not "
                         f"read it (it pre-trains from scratch from --config_file); drop it, or pass --model {init} "
                         f"to continue pre-training from its weights")
    if args.steps_this_run > 0:
        args.stop_at_step = args.steps_this_run
    if args.model is not None:  # --config_file describes the checkpoint; --vocab_file is its vocabulary
        args.model_source = args.model
        args.model = common.nvidia_model(args.model, args.config_file, args.tokenizer)
        args.tokenizer = None
    else:
        args.config = args.config_file


def nvidia_input_dir(path: str) -> str:
    """run_pretraining.py reads the files of --input_dir whose names contain "training" (its data
    directory also holds the *_test_* shards); a directory without such names is read whole."""
    directory = Path(path)
    if directory.is_dir() and any("training" in p.name for p in directory.iterdir() if p.is_file()):
        return str(directory / "*training*")
    return path


def load_data(path: str, verify: bool, flag: str = "--data") -> Any:
    from bertkit.data import records

    p = Path(path)
    if verify and p.is_dir() and (p / "manifest.json").is_file():
        records.verify(p)  # a corrupted shard fails now, not hours into the run
    return records.open_pretraining_data(path, flag)


def load_tokenizer(args: argparse.Namespace, data: Any) -> Any:
    from bertkit.tokenization import Tokenizer

    if args.model is not None:
        if args.tokenizer is not None:
            raise ValueError("--tokenizer goes with --config; with --model the checkpoint's tokenizer is used")
        return common.load_tokenizer(args.model, args.do_lower_case)
    spec = args.tokenizer
    if spec is None:
        saved = data.manifest.get("tokenizer", {}).get("path")
        directory = getattr(data, "directory", None)
        if saved is None or directory is None or not (Path(directory) / saved).is_dir():
            raise ValueError(f"--config {args.config}: give --tokenizer (vocab.txt or tokenizer directory); "
                             f"--data {args.data} does not carry its tokenizer")
        spec = str(Path(directory) / saved)
    return Tokenizer.from_pretrained(spec, do_lower_case=args.do_lower_case)


def build_model(args: argparse.Namespace, tokenizer: Any, max_seq_length: int):
    """BertForPreTraining from a checkpoint (missing heads initialised, as for MiniLM) or from a
    preset / config.json sized to the tokenizer's vocabulary."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForPreTraining

    if args.model is not None:
        model = BertForPreTraining.from_pretrained(args.model)
    else:
        config = preset(args.config, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id)
        model = BertForPreTraining(config)
    if max_seq_length > model.config.max_position_embeddings:
        raise ValueError(f"--data rows are up to {max_seq_length} tokens but the model has only "
                         f"{model.config.max_position_embeddings} position embeddings; rebuild the records "
                         f"with a smaller --max-seq-length")
    return model


def check_stated_shape(args: argparse.Namespace, data: Any) -> None:
    """run_pretraining.py's --max_seq_length and --max_predictions_per_seq describe its records; here
    the records say it themselves, and a command line that states another shape is refused."""
    for flag, stated, key in (("--max_seq_length", args.max_seq_length, "max_seq_length"),
                              ("--max_predictions_per_seq", args.max_predictions_per_seq, "max_predictions")):
        actual = data.manifest.get(key)
        if stated is not None and actual and int(actual) != stated:
            raise ValueError(f"{flag} {stated}: the records in --data {args.data} have {key} {actual}; the "
                             f"records fix it (rebuild them with pretrain-data to change it)")


def run(args: argparse.Namespace) -> int:
    from bertkit.training import distributed
    from bertkit.training.pretraining import (PretrainingTask, check_vocabulary, held_out_warning, masking_description,
                                              split_held_out)
    from bertkit.training.trainer import apply_best_metric, seed_everything, train

    if args.do_eval and not args.do_train:
        # run_pretraining.py --do_eval alone scores a checkpoint; this command would train one instead.
        raise ValueError("pretrain --do_eval without --do_train: pretrain trains (and with --do_train --do_eval "
                         "scores the held-out records at the end); it has no evaluation-only mode")
    if getattr(args, "config_file", None) is not None:  # NVIDIA's run_pretraining.py
        nvidia_checkpoint_flags(args)
        args.data = nvidia_input_dir(args.data)
    if args.model is None and args.config is None:
        raise ValueError("pretrain needs --model (continue pre-training a checkpoint) or --config (from scratch)")
    if args.model is not None and args.config is not None:
        # run_pretraining.py names the checkpoint's config beside --init_checkpoint: only that file is accepted.
        common.check_files_beside_model(args.model, vocab_file=None, config_file=args.config)
        args.config = None
    config = common.train_config_from_args(args)
    info = distributed.setup(config.device)
    data = load_data(args.data, args.verify)
    check_stated_shape(args, data)
    tokenizer = load_tokenizer(args, data)
    eval_data = None
    if args.eval_data is not None:
        eval_data = load_data(args.eval_data, args.verify, "--eval-data")
        train_part = data
    else:
        train_part, eval_data = split_held_out(data, args.eval_fraction, config.seed)
        if eval_data is not None and info.is_main:
            warning = held_out_warning(data, eval_data)
            left_out = len(data) - len(train_part) - len(eval_data)
            if warning:
                common.eprint(warning)
            elif left_out:
                common.eprint(f"note: held out {len(eval_data)} records of whole documents; {left_out} more records "
                              f"that hold text of those documents are left out of training")
    if config.eval_every != "none" and eval_data is None and config.best_metric:
        raise ValueError(f"--best-metric {config.best_metric}: there are no held-out records to evaluate "
                         f"(--eval-fraction 0 and no --eval-data)")
    if config.eval_every != "none" and eval_data is None and info.is_main:
        common.eprint("note: no held-out records (--eval-fraction 0 and no --eval-data): no evaluation")

    seed_everything(config.seed)  # initialisation is part of the seeded run
    max_len = max(int(d.manifest.get("max_seq_length") or 0) for d in (data, eval_data) if d is not None)
    model = build_model(args, tokenizer, max_len)
    check_vocabulary(data, tokenizer, f"--data {args.data}", model.config.vocab_size)
    if args.eval_data is not None:
        check_vocabulary(eval_data, tokenizer, f"--eval-data {args.eval_data}", model.config.vocab_size)

    task = PretrainingTask(data, tokenizer, masking=args.masking)
    eval_set = task.eval_set(eval_data) if config.eval_every != "none" else None
    apply_best_metric(task, config, eval_set)
    if eval_set is not None and not any(inst["masked_positions"].size for inst in eval_set[1]):
        # Found here, not at the first evaluation after minutes of training.
        source = f"--eval-data {args.eval_data}" if args.eval_data else f"the held-out part of --data {args.data}"
        raise DataError(f"{source}: its {len(eval_data)} records hold no masked token, so there is no MLM loss "
                        f"to measure; build records with a higher --masked-lm-prob (or more --target-words), or "
                        f"pass --eval-every none")
    train_features = task.training_view(train_part)

    output_dir = Path(config.output_dir)
    if (output_dir / common.BERTKIT_JSON).exists() and not config.resume and info.is_main:
        common.eprint(f"note: {output_dir} holds a finished run; it will be overwritten")
        (output_dir / common.BERTKIT_JSON).unlink()
    run_info = {
        "task": "pretrain", "head": task.head, "data": str(args.data), "eval_data": args.eval_data,
        "eval_fraction": None if args.eval_data else args.eval_fraction,
        "masking": task.masking, "nsp": task.nsp, "max_seq_length": max_len,
        "vocab_hash": tokenizer.vocab_hash, "base_model": getattr(args, "model_source", args.model), "config": args.config,
        "train": dataclasses.asdict(config), "main_metric": task.main_metric,
        "command": " ".join(["bertkit", *sys.argv[1:]]),
    }

    save_model = common.model_saver(tokenizer, run_info)

    if info.is_main:
        common.eprint(f"pretrain: {len(train_features)} training records, "
                      f"{len(eval_data) if eval_data is not None else 0} held out"
                      f"{'' if eval_set else ' (not evaluated)'}; masking {masking_description(data, task.masking)}, "
                      f"{'MLM+NSP' if task.nsp else 'MLM only'}; {config.precision} on {info.device}, "
                      f"global batch {config.batch_size} x {info.world_size} x {config.grad_accum}")
    result = train(task, model, train_features, eval_set, config, info=info, save_model=save_model)
    if info.is_main:
        metrics = {"task": "pretrain", "best_step": result.state.best_step, "steps": result.state.global_step,
                   "skipped_steps": result.state.skipped_steps, "eval": result.final_metrics,
                   "history": result.state.history}
        common.write_metrics_atomic(output_dir / "metrics.json", metrics)
        common.write_json_atomic(output_dir / common.BERTKIT_JSON, run_info)  # last: marks a complete run
        print(f"pretrain: {result.final_metrics}")
    distributed.shutdown()
    return 0
