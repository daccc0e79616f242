"""`bertkit predict --task T --model RUN_DIR --data-dir D --split test --output FILE_OR_DIR`:
predictions in the benchmark's format (for GLUE, the submission file named as the server expects
when --output is a directory). A path with a file suffix (.tsv, .json) is the file; any other path
(an existing directory, a trailing /, or a name without a suffix) is a directory, created if need
be, that receives the standard name, for every task."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

from bertkit.commands import common
from bertkit.commands.evaluate import add_model_and_data_arguments, load_for_inference
from bertkit.tasks.base import softmax


def add_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    add_model_and_data_arguments(parser, argv)
    parser.add_argument("--split", default="test",
                        help="split to predict: test writes the submission file (SST-2.tsv; MNLI-m.tsv and "
                             "MNLI-mm.tsv), another split gets its name in the file (SST-2.dev.tsv)")
    parser.add_argument("--output", default=None,
                        help="prediction file (a path with a suffix: preds.tsv), or a directory (an existing one, "
                             "a trailing /, or a path without a suffix) that gets the benchmark's file name; with "
                             "--input, a JSON-lines file (default -: standard output)")
    parser.add_argument("--input", default=None, metavar="FILE",
                        help="new text instead of a split: one example per line of FILE (- reads standard input), "
                             "as the task reads it (classification: a text, or text<TAB>second text; ner: a "
                             "sentence; squad: JSON {question, context}; atsc: sentence<TAB>aspect; multiple "
                             "choice: JSON {context, choices}; polyphone: a sentence with ▁X▁ around the "
                             "character to read); writes one JSON line per example: its id, input "
                             "and prediction, with class probabilities where the head has them")


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


def write_script_file(script: str, task, examples: list, predictions: list, probabilities: list | None,
                      directory: Path) -> list[Path]:
    """--do_predict also leaves the file of the script whose command line ran, for what reads it next:
    run_classifier.py's test_results.tsv (each example's class probabilities, tab-separated, no header;
    MNLI's matched half, the test set it predicts) or run_glue.py's predict_results_TASK.txt (`index`,
    `prediction`: the label, or the score to 3 decimals; MNLI's mismatched half in
    predict_results_mnli-mm.txt). Other tasks have no such file."""
    from bertkit.tasks.base import open_for_writing
    from bertkit.tasks.glue import is_mismatched

    mismatched = [task.name == "mnli" and is_mismatched(e) for e in examples]
    written = []
    if script == "run_classifier" and probabilities is not None:
        path = directory / "test_results.tsv"
        with open_for_writing(path) as f:
            for row, is_mm in zip(probabilities, mismatched):
                if not is_mm:
                    f.write("\t".join(str(np.float32(p)) for p in row) + "\n")
        written.append(path)
    elif script == "run_glue" and getattr(task, "submission_name", "") and task.name != "ax":
        for half, name in ((False, task.name), (True, f"{task.name}-mm")):
            rows = [p for p, is_mm in zip(predictions, mismatched) if is_mm == half]
            if not rows:
                continue
            path = directory / f"predict_results_{name}.txt"
            with open_for_writing(path) as f:
                f.write("index\tprediction\n")
                for index, prediction in enumerate(rows):
                    value = f"{prediction:3.3f}" if task.head == "regression" else task.prediction_label(prediction)
                    f.write(f"{index}\t{value}\n")
            written.append(path)
    return written


# Lines of --input read, encoded and predicted at a time: memory stays bounded on a large file.
INPUT_BLOCK_LINES = 10_000


def input_blocks(source: str, block_lines: int | None = None) -> Iterator[list[tuple[str, str]]]:
    """The non-blank lines of --input as (where, line), "FILE:LINE" ("stdin:LINE" for -), in blocks
    of INPUT_BLOCK_LINES."""
    import sys

    block_lines = block_lines or INPUT_BLOCK_LINES
    from bertkit.tasks.base import DataError

    if source == "-":  # bytes where there are (a real stdin), else its text (a StringIO in its place)
        handle, name, owned = getattr(sys.stdin, "buffer", sys.stdin), "stdin", False
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"--input {source}: no such file")
        handle, name, owned = open(source, "rb"), source, True
    block: list[tuple[str, str]] = []
    any_line = False
    with contextlib.closing(handle) if owned else contextlib.nullcontext():
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            except UnicodeDecodeError as err:
                raise DataError(f"{name}:{number}: not UTF-8 ({err.reason} at byte {err.start} of the line); "
                                f"re-encode the input as UTF-8") from None
            line = line.removeprefix("\ufeff" if number == 1 else "").rstrip("\r\n")
            if line.strip():
                block.append((f"{name}:{number}", line))
                any_line = True
            if len(block) == block_lines:
                yield block
                block = []
    if not any_line:
        raise ValueError(f"--input {source}: no non-blank lines to predict")
    if block:
        yield block


class Predictor:
    """A fine-tuned run directory, loaded once, predicting new text in Python as `predict --input`
    does on the command line:

        from bertkit import Predictor
        sst2 = Predictor("runs/sst2")                  # task, labels, tokenizer from the run
        sst2(["a gorgeous film", "flat and dull"])    # [{"id": "0", "text": ..., "prediction": "1",
                                                      #   "probabilities": {"0": 0.02, "1": 0.98}}, ...]
        Predictor("runs/rte")([("A man sings.", "Someone makes music.")])
        Predictor("runs/squad")([{"question": "Who won?", "context": "The Broncos won."}])

    An input is a string (one line of --input), a tuple (its tab-separated fields) or a dict (its
    JSON form). `options` are predict's flags by name (task="rte" for a multi-task run,
    device="cpu", batch_size=64, precision="bf16", max_seq_length=256; a switch as True: cased=True)."""

    def __init__(self, run: str | Path, **options: object):
        from bertkit.cli import build_parser

        argv = ["predict", "--model", str(run)]
        for name, value in options.items():
            flag = f"--{name.replace('_', '-')}"
            if value is True:  # a switch (cased=True)
                argv.append(flag)
            elif value not in (False, None):
                argv += [flag, str(value)]
        parser, _ = build_parser(argv)
        self._load(parser.parse_args(argv))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Predictor":
        """From parsed command-line flags (`bertkit serve`'s)."""
        predictor = cls.__new__(cls)
        predictor._load(args)
        return predictor

    def _load(self, args: argparse.Namespace) -> None:
        self.args = args
        self.task, self.model, self.tokenizer, self.info, self.precision = load_for_inference(args)

    def __call__(self, inputs: list[str | tuple | dict]) -> list[dict]:
        import json

        from bertkit.tasks.base import DataError

        lines = []
        for n, item in enumerate(inputs):
            if not isinstance(item, (str, tuple, list, dict)):
                raise DataError(f"input {n}: {item!r}; expected a string, a list of fields or an object")
            if isinstance(item, dict):
                line = json.dumps(item, ensure_ascii=False)
            else:
                line = "\t".join(map(str, item)) if isinstance(item, (tuple, list)) else str(item)
            lines.append((f"input {n}", line))
        return new_text_records(self.task, self.model, self.tokenizer, self.info, self.precision,
                                self.args.batch_size, lines)


def new_text_records(task, model, tokenizer, info, precision: str, batch_size: int,
                     lines: list[tuple[str, str]], first_index: int = 0) -> list[dict]:
    """Raw input lines (where, line) -> the task's examples -> one record per example; examples
    without an id of their own are numbered from `first_index`."""
    from bertkit.training.trainer import predict_features

    examples = task.raw_examples(lines, first_index)
    features = task.encode(examples, tokenizer, task.options.max_seq_length)
    outputs = predict_features(task, model, features, batch_size, info.device, precision, info)
    predictions = task.postprocess(examples, features, outputs)
    by_example = outputs if len(outputs) == len(examples) else [None] * len(examples)  # SQuAD: windows
    return task.raw_records(examples, by_example, predictions)


def predict_new_text(args: argparse.Namespace) -> int:
    """`predict --input`: the task's examples from raw lines, predicted, one JSON line each."""
    import json
    import sys

    from bertkit.tasks.base import open_for_writing
    from bertkit.training import distributed

    output = args.output or "-"
    if output != "-" and names_a_directory(output):
        raise ValueError(f"--output {output}: with --input, a JSON-lines file (e.g. predictions.jsonl) or - for "
                         f"standard output")
    task, model, tokenizer, info, precision = load_for_inference(args)
    if args.input == "-" and info.world_size > 1:
        raise ValueError("--input - under torchrun: only one process would read standard input; give a file, "
                         "which every process reads")
    written = 0
    with contextlib.ExitStack() as stack:
        out = sys.stdout if output == "-" else stack.enter_context(open_for_writing(output))
        for block in input_blocks(args.input):
            records = new_text_records(task, model, tokenizer, info, precision, args.batch_size, block, written)
            if info.is_main:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                out.flush()
            written += len(records)
    if info.is_main:
        print(f"predicted {written} examples of --input {args.input}" + ("" if output == "-" else f" into {output}"),
              file=sys.stderr)
    distributed.shutdown()
    return 0


def run(args: argparse.Namespace) -> int:
    from bertkit.training import distributed
    from bertkit.training.trainer import predict_features

    if getattr(args, "input", None) is not None:
        return predict_new_text(args)
    if args.output is None:
        raise ValueError("--output is required: a prediction file or a directory for the benchmark's file "
                         "(or give --input FILE to predict new text, written as JSON lines to standard output)")
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
        if getattr(args, "script_file", None):
            paths += write_script_file(args.script_file, task, examples, predictions, kwargs.get("probabilities"),
                                       output.parent)
        print(f"wrote {len(predictions)} predictions to {', '.join(str(p) for p in paths)}")
    distributed.shutdown()
    return 0
