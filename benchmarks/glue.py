"""GLUE dev scores: bertkit fine-tuning vs the Hugging Face Trainer (run_glue.py's engine) from the
same checkpoint with the same settings, on every GLUE task whose train and dev files are present.

    python benchmarks/glue.py --model ../shared/models/all-MiniLM-L6-v2 --glue ../shared/data/glue \
        [--tasks cola,sst2,mrpc,stsb,rte,wnli] [--reference] [--epochs 3 --lr 5e-5 --batch-size 32]

Settings default to the issue's: lr 5e-5, batch 32, 3 epochs, max length 128, bf16 on GPU, and
run_glue.py's defaults elsewhere (no warmup, no weight decay, linear decay). bertkit evaluates after
every epoch and keeps the best epoch; the table shows both its best and its last epoch, and the
reference's last epoch (what run_glue.py reports) and best epoch. --small runs a CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TASK_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qnli": "QNLI",
                "rte": "RTE", "wnli": "WNLI", "qqp": "QQP", "mnli": "MNLI"}


def run_bertkit(task: str, args, out: Path) -> tuple[dict, dict, float]:
    from bertkit.cli import main

    argv = ["finetune", "--task", task, "--model", args.model, "--data-dir", str(Path(args.glue) / TASK_FOLDERS[task]),
            "--output-dir", str(out), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--max-seq-length", str(args.max_seq_length),
            "--weight-decay", "0", "--warmup-ratio", "0", "--seed", str(args.seed), "--no-progress",
            "--log-every", "50", "--eval-every", "epoch"]
    if args.precision:
        argv += ["--precision", args.precision]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    if args.compile:
        argv += ["--compile"]
    start = time.perf_counter()
    assert main(argv) == 0, f"bertkit finetune {task} failed"
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    return metrics["dev"], history[-1]["eval"], seconds


def run_reference(task: str, args, out: Path) -> tuple[dict, dict, float]:
    """transformers' own Trainer on the same examples (read by bertkit's reader), same settings."""
    import numpy as np
    import torch
    import transformers

    from bertkit.tasks import TaskOptions, get_task_class

    t = get_task_class(task)(TaskOptions(data_dir=str(Path(args.glue) / TASK_FOLDERS[task])))
    train_examples, dev_examples = t.read("train"), t.read("dev")
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    regression = t.head == "regression"
    labels = t.label_names()

    class DS(torch.utils.data.Dataset):
        def __init__(self, examples):
            pairs = [e.text_b for e in examples] if examples[0].text_b is not None else None
            self.enc = tok([e.text_a for e in examples], pairs, truncation=True, max_length=args.max_seq_length)
            self.y = [float(e.label) if regression else labels.index(e.label) for e in examples]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in self.enc.items()}, "labels": self.y[i]}

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=1 if regression else len(labels), attn_implementation="sdpa",
        problem_type="regression" if regression else "single_label_classification")

    def compute(eval_pred):
        logits, gold = eval_pred
        predictions = logits.reshape(-1) if regression else np.argmax(logits, -1)
        return t.metrics(dev_examples, [float(p) if regression else int(p) for p in predictions])

    use_cuda = torch.cuda.is_available()
    targs = transformers.TrainingArguments(
        output_dir=str(out), learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
        weight_decay=0.0, warmup_steps=0, eval_strategy="epoch", save_strategy="no", report_to=[],
        bf16=use_cuda and args.precision != "fp32", seed=args.seed, logging_steps=50, disable_tqdm=True,
        use_cpu=not use_cuda, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=DS(train_examples), compute_metrics=compute,
                                   eval_dataset=DS(dev_examples),
                                   data_collator=transformers.DataCollatorWithPadding(tok))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    evals = [{k[5:]: v for k, v in r.items() if k.startswith("eval_")} for r in trainer.state.log_history
             if any(k.startswith("eval_") for k in r)]
    main_metric = t.main_metric
    best = max(evals, key=lambda r: r.get(main_metric, float("-inf")))
    return best, evals[-1], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--glue", required=True, help="glue_data directory")
    parser.add_argument("--tasks", default="cola,sst2,mrpc,stsb,rte,wnli,qnli,qqp,mnli")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--reference", action="store_true", help="also run transformers' Trainer")
    parser.add_argument("--small", action="store_true", help="CPU smoke run: RTE and MRPC, 20 steps")
    parser.add_argument("--out", default="runs/bench-glue")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()
    if args.small:
        args.tasks, args.max_steps = "rte,mrpc", 20
    rows, results = [], {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        folder = Path(args.glue) / TASK_FOLDERS[task]
        dev_name = "dev_matched.tsv" if task == "mnli" else "dev.tsv"
        if not (folder / "train.tsv").is_file() or not (folder / dev_name).is_file():
            print(f"skip {task}: {folder} has no train.tsv/{dev_name}", file=sys.stderr)
            continue
        best, last, seconds = run_bertkit(task, args, Path(args.out) / task)
        results[task] = {"bertkit": {"best": best, "last": last, "seconds": seconds}}
        ref = None
        if args.reference:
            try:
                ref = run_reference(task, args, Path(args.out) / f"{task}-reference")
                results[task]["transformers"] = {"best": ref[0], "last": ref[1], "seconds": ref[2]}
            except ImportError as err:  # Trainer needs accelerate
                print(f"reference skipped: {err}", file=sys.stderr)
        from bertkit.tasks import get_task_class

        metric = get_task_class(task).main_metric
        cells = [task, metric, f"{100 * best[metric]:.2f}", f"{100 * last[metric]:.2f}", f"{seconds:.0f}"]
        cells += ([f"{100 * ref[1][metric]:.2f}", f"{100 * ref[0][metric]:.2f}", f"{ref[2]:.0f}"] if ref else ["", "", ""])
        rows.append(cells)
        print(f"{task}: bertkit {best} ({seconds:.0f}s)" + (f"; transformers last {ref[1]}" if ref else ""), flush=True)
    header = ["task", "metric", "bertkit best epoch", "bertkit last epoch", "bertkit s",
              "transformers last epoch", "transformers best epoch", "transformers s"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
