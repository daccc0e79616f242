"""`bertkit predict --task T --model RUN_DIR --data-dir D --split test --output FILE_OR_DIR`:
predictions in the benchmark's format (for GLUE, the submission file named as the server expects
when --output is a directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bertkit.commands import common
from bertkit.commands.evaluate import add_model_and_data_arguments, load_for_inference


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_model_and_data_arguments(parser, argv)
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True, help="prediction file, or a directory for the standard name")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def prediction_file_name(task, split: str) -> str:
    """The file name in an --output directory: the benchmark's submission name for test splits
    (SST-2.tsv), the same with the split for others (SST-2.dev.tsv), so that dev predictions never
    overwrite a test submission."""
    name = getattr(task, "submission_name", "")
    if not name:
        return f"{task.name}_{split}_predictions{getattr(task, 'prediction_suffix', '.jsonl')}"
    if split.startswith("test"):
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{split}.{suffix}" if dot else f"{name}.{split}"


def run(args: argparse.Namespace) -> int:
    from bertkit.training import distributed
    from bertkit.training.trainer import predict_features

    task, model, tokenizer, info, precision = load_for_inference(args)
    examples = task.read(args.split)
    features = common.encode_cached(task, args.split, examples, tokenizer, task.options.max_seq_length, info)
    outputs = predict_features(task, model, features, args.batch_size, info.device, precision, info)
    predictions = task.postprocess(examples, features, outputs)
    if info.is_main:
        output = Path(args.output)
        if output.is_dir() or args.output.endswith("/"):
            output = output / prediction_file_name(task, args.split)
        kwargs = {}
        if task.head in ("sequence_classification",) and outputs and np.ndim(outputs[0]) == 1:
            kwargs["probabilities"] = [softmax(np.asarray(o)) for o in outputs]
        try:
            written = task.write_predictions(examples, predictions, output, **kwargs)
        except TypeError:  # tasks whose writer takes no probabilities
            written = task.write_predictions(examples, predictions, output)
        print(f"wrote {len(predictions)} predictions to {written}")
    distributed.shutdown()
    return 0
