"""`bertkit predict --task T --model RUN_DIR --data-dir D --split test --output FILE_OR_DIR`:
predictions in the benchmark's format (for GLUE, the submission file named as the server expects
when --output is a directory). A path with a file suffix (.tsv, .json) is the file; any other path
(an existing directory, a trailing /, or a name without a suffix) is a directory, created if need
be, that receives the standard name, for every task."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bertkit.commands import common
from bertkit.commands.evaluate import add_model_and_data_arguments, load_for_inference


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_model_and_data_arguments(parser, argv)
    parser.add_argument("--split", default="test",
                        help="split to predict: test writes the submission file (SST-2.tsv; MNLI-m.tsv and "
                             "MNLI-mm.tsv), another split gets its name in the file (SST-2.dev.tsv)")
    parser.add_argument("--output", required=True,
                        help="prediction file (a path with a suffix: preds.tsv), or a directory (an existing one, "
                             "a trailing /, or a path without a suffix) that gets the benchmark's file name")


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
    mismatched_name = getattr(task, "mismatched_submission_name", "")
    if mismatched_name:
        # MNLI's one-half splits: test_mismatched is the MNLI-mm.tsv submission, and dev_mismatched
        # gets MNLI-mm.dev.tsv, the file `--split dev` writes the same predictions to.
        if split.endswith("_mismatched"):
            name = mismatched_name
        split = split.removesuffix("_mismatched").removesuffix("_matched")
    if split.startswith("test"):
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{split}.{suffix}" if dot else f"{name}.{split}"


def names_a_directory(output: str) -> bool:
    """--output is a directory when it is one, ends in /, or has no suffix (`submission`)."""
    path = Path(output)
    return path.is_dir() or output.endswith("/") or not path.suffix


def check_output(output: str) -> None:
    """A file where --output needs a folder would fail only once the whole split is predicted."""
    path = Path(output)
    for folder in ([path] if names_a_directory(output) else []) + list(path.parents):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--output {output}: {folder} is a file, but the predictions need a directory "
                             f"there (a path ending in / or without a suffix names a directory)")


def run(args: argparse.Namespace) -> int:
    from bertkit.training import distributed
    from bertkit.training.trainer import predict_features

    check_output(args.output)
    task, model, tokenizer, info, precision = load_for_inference(args)
    examples = task.read(args.split)
    features = common.encode_cached(task, args.split, examples, tokenizer, task.options.max_seq_length, info)
    outputs = predict_features(task, model, features, args.batch_size, info.device, precision, info)
    predictions = task.postprocess(examples, features, outputs)
    if info.is_main:
        output = Path(args.output)
        if names_a_directory(args.output):
            output = output / prediction_file_name(task, args.split)
        kwargs = {}
        if task.head in ("sequence_classification",) and outputs and np.ndim(outputs[0]) == 1:
            kwargs["probabilities"] = [softmax(np.asarray(o)) for o in outputs]
        elif task.head == "multi_label_classification":  # one independent sigmoid per label
            kwargs["probabilities"] = [1 / (1 + np.exp(-np.asarray(o, dtype=np.float64))) for o in outputs]
        try:
            written = task.write_predictions(examples, predictions, output, **kwargs)
        except TypeError:  # tasks whose writer takes no probabilities
            written = task.write_predictions(examples, predictions, output)
        paths = written if isinstance(written, list) else [written]
        print(f"wrote {len(predictions)} predictions to {', '.join(str(p) for p in paths)}")
    distributed.shutdown()
    return 0
