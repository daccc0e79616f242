"""Full fine-tuning runs of the non-GLUE tasks, printing one table of scores:
SQuAD v1.1 and v2.0 (offline only the dev files exist: train on the first K articles of the dev
file, evaluate on the held-out articles), CoNLL-2003 NER (valid and test), SemEval-2014 aspect
sentiment (restaurants, laptops; evaluated on the official test sets). SWAG is run when a swagaf
data directory is given.

    python benchmarks/tasks.py --model ../shared/models/all-MiniLM-L6-v2 --data ../shared/data [--small]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def finetune(args, task: str, out: Path, data_dir: Path, extra: list[str], eval_split: str = "dev") -> tuple[dict, float]:
    from bertkit.cli import main

    argv = ["finetune", "--task", task, "--model", args.model, "--data-dir", str(data_dir),
            "--output-dir", str(out), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-progress", "--log-every", "100",
            "--eval-split", eval_split, *extra]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    start = time.perf_counter()
    if main(argv) != 0:
        raise RuntimeError(f"finetune {task} failed")
    seconds = time.perf_counter() - start
    return json.loads((out / "metrics.json").read_text())[eval_split], seconds


def evaluate(args, task: str, model_dir: Path, data_dir: Path, split: str, extra: list[str]) -> dict:
    from bertkit.cli import main

    metrics_file = model_dir / f"eval-{split}.json"
    if main(["evaluate", "--task", task, "--model", str(model_dir), "--data-dir", str(data_dir),
             "--split", split, "--output", str(metrics_file), *extra]) != 0:
        raise RuntimeError(f"evaluate {task} {split} failed")
    return json.loads(metrics_file.read_text())[split]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="directory holding squad_v1.1, squad_v2.0, conll2003, semeval2014_absa")
    parser.add_argument("--swag", default=None, help="swagaf data directory (train.csv, val.csv), if available")
    parser.add_argument("--tasks", default="squad1,squad2,conll,atsc-restaurants,atsc-laptops,swag")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--small", action="store_true", help="CPU smoke run: 10 steps per task")
    parser.add_argument("--out", default="runs/bench-tasks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.small:
        args.max_steps = 10
    data, out = Path(args.data), Path(args.out)
    wanted = {t.strip() for t in args.tasks.split(",")}
    rows: list[list[str]] = []
    results: dict[str, dict] = {}

    def record(name: str, setting: str, metrics: dict, keys: list[str], seconds: float) -> None:
        results[name] = {"setting": setting, "metrics": metrics, "seconds": seconds}
        rows.append([name, setting, ", ".join(f"{k} {metrics[k]:.2f}" if metrics[k] > 1 else f"{k} {100 * metrics[k]:.2f}"
                                              for k in keys if k in metrics), f"{seconds:.0f}"])
        print(f"{name}: {metrics}", flush=True)

    for name, folder, split_at in (("squad1", "squad_v1.1", 36), ("squad2", "squad_v2.0", 26)):
        if name in wanted and (data / folder).is_dir():
            extra = ["--article-split", str(split_at), "--max-seq-length", "384"]
            metrics, seconds = finetune(args, "squad", out / name, data / folder, extra)
            keys = ["exact_match", "f1"] if name == "squad1" else ["exact_match", "f1", "HasAns_f1", "NoAns_f1", "best_f1"]
            record(name, f"train: first {split_at} dev articles; eval: the other articles", metrics, keys, seconds)
    if "conll" in wanted and (data / "conll2003").is_dir():
        metrics, seconds = finetune(args, "conll2003", out / "conll", data / "conll2003", [])
        record("conll2003 valid", "train.txt", metrics, ["f1", "precision", "recall"], seconds)
        test = evaluate(args, "conll2003", out / "conll", data / "conll2003", "test", [])
        record("conll2003 test", "train.txt", test, ["f1", "precision", "recall"], 0.0)
    for domain in ("restaurants", "laptops"):
        if f"atsc-{domain}" in wanted and (data / "semeval2014_absa" / "xml").is_dir():
            metrics, seconds = finetune(args, "atsc", out / f"atsc-{domain}", data / "semeval2014_absa" / "xml",
                                        ["--domain", domain], eval_split="test")
            record(f"atsc {domain}", "train XML, conflict dropped; eval: official test", metrics,
                   ["accuracy", "macro_f1"], seconds)
    if "swag" in wanted:
        if args.swag and Path(args.swag).is_dir():
            metrics, seconds = finetune(args, "swag", out / "swag", Path(args.swag), [])
            record("swag", "train.csv", metrics, ["accuracy"], seconds)
        else:
            print("skip swag: no swagaf data directory (--swag); none is available offline", file=sys.stderr)
    print("\n| task | setting | dev/test scores | seconds |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
