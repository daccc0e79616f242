"""The polyphone seed's workflow end to end, with no pretrained Chinese weights: pre-fine-tune a
Chinese BERT from scratch with MLM on the unlabeled polyphone sentences under one masking strategy,
fine-tune it with `--task polyphone`, then score it with benchmarks/polyphone.py against the
majority and pypinyin baselines.

    python benchmarks/polyphone_workflow.py                      # GPU: medium preset, all strategies
    python benchmarks/polyphone_workflow.py --small               # CPU smoke run: tiny preset, a few steps
    python benchmarks/polyphone_workflow.py --strategies targets+uniform,none --parallel 2

Strategies (MLM masking of the pre-fine-tuning step, as in the seed):
- none:             no pre-fine-tuning; fine-tune from random initialisation (the ablation)
- uniform:          15% of characters
- targets:          only the polyphonic characters, each at 80%
- targets+uniform:  polyphonic characters at 80%, all others at 15%
- span:             SpanBERT-style contiguous spans, 15% of characters

Pre-training text: the g2pL train sentences and the CPP dev sentences (markers removed). Neither
test set is read before scoring. The polyphonic characters are the 114 labelled in g2pL train.
Each strategy writes <out>/<strategy>/{records,pretrain,finetune,scores.json}; the last lines
printed are a Markdown table of test accuracies per strategy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "polyphone"
HERE = Path(__file__).resolve().parent

STRATEGY_FLAGS = {
    "uniform": ["--masked-lm-prob", "0.15"],
    "targets": ["--target-words", "{targets}", "--target-mask-prob", "0.8", "--masked-lm-prob", "0.0"],
    "targets+uniform": ["--target-words", "{targets}", "--target-mask-prob", "0.8", "--masked-lm-prob", "0.15"],
    "span": ["--span-mask", "--masked-lm-prob", "0.15"],
}


def write_corpus(out: Path, g2pl: Path, cpp: Path) -> tuple[Path, Path]:
    """One sentence per document (the sentences are unrelated), and the polyphonic characters."""
    from bertkit.tasks.polyphone import read_examples

    train = read_examples(g2pl / "train")
    sentences = [ex.text for ex in train] + [ex.text for ex in read_examples(cpp / "dev")]
    corpus = out / "corpus.txt"
    corpus.write_text("".join(s + "\n\n" for s in sentences), encoding="utf-8")
    targets = out / "polyphones.txt"
    targets.write_text("".join(c + "\n" for c in sorted({ex.char for ex in train})), encoding="utf-8")
    return corpus, targets


def random_init_model(directory: Path, config_name: str, tokenizer_dir: Path) -> Path:
    """A from-scratch checkpoint for the 'none' strategy, saved the way `pretrain` saves one."""
    import torch

    from bertkit.config import preset
    from bertkit.modeling.heads import BertForPreTraining
    from bertkit.tokenization import Tokenizer

    tokenizer = Tokenizer.from_pretrained(str(tokenizer_dir), do_lower_case=True)
    torch.manual_seed(0)
    model = BertForPreTraining(preset(config_name, vocab_size=tokenizer.vocab_size))
    model.save_pretrained(directory, tokenizer=tokenizer)
    return directory


def run(argv: list[str], log: Path) -> None:
    with log.open("w") as handle:
        done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({log}):\n" + "\n".join(tail))


def strategy_run(strategy: str, args, corpus: Path, targets: Path) -> dict:
    out = args.out / strategy
    out.mkdir(parents=True, exist_ok=True)
    bertkit = [sys.executable, "-m", "bertkit.cli"]
    timings = {}
    start = time.perf_counter()
    if strategy == "none":
        model_dir = random_init_model(out / "pretrain", args.config, args.tokenizer)
    else:
        flags = [f.format(targets=targets) for f in STRATEGY_FLAGS[strategy]]
        records = out / "records"
        if not (records / "manifest.json").exists():
            run([*bertkit, "pretrain-data", "--input", str(corpus), "--tokenizer", str(args.tokenizer),
                 "--do_lower_case", "--output-dir", str(records), "--max-seq-length", str(args.max_seq_length),
                 "--no-nsp", "--masking", "dynamic", *flags, "--seed", str(args.seed)], out / "pretrain-data.log")
        model_dir = out / "pretrain"
        run([*bertkit, "pretrain", "--data", str(records), "--config", args.config, "--output-dir", str(model_dir),
             "--max-steps", str(args.pretrain_steps), "--batch-size", str(args.pretrain_batch_size),
             "--lr", str(args.pretrain_lr), "--warmup-ratio", "0.06", "--eval-fraction", "0.02",
             "--eval-every", str(max(args.pretrain_steps // 4, 1)), "--seed", str(args.seed),
             "--no-progress", "--log-every", "200", *args.extra_train], out / "pretrain.log")
    timings["pretrain_s"] = time.perf_counter() - start

    start = time.perf_counter()
    finetuned = out / "finetune"
    steps = ["--max-steps", str(args.finetune_steps)] if args.finetune_steps else ["--epochs", str(args.epochs)]
    run([*bertkit, "finetune", "--task", "polyphone", "--model", str(model_dir), "--data-dir", str(args.g2pl),
         "--output-dir", str(finetuned), *steps, "--batch-size", str(args.batch_size), "--lr", str(args.lr),
         "--warmup-ratio", "0.1", "--class-weights", args.class_weights, "--eval-every", "epoch",
         "--seed", str(args.seed), "--no-progress", "--log-every", "200", *args.extra_train], out / "finetune.log")
    timings["finetune_s"] = time.perf_counter() - start

    scores = out / "scores.json"
    limit = ["--limit", str(args.limit)] if args.limit else []
    run([sys.executable, str(HERE / "polyphone.py"), "--model", str(finetuned), "--g2pl", str(args.g2pl),
         "--cpp", str(args.cpp), "--json", str(scores), *limit], out / "score.log")
    result = json.loads(scores.read_text())
    result["timings"] = timings
    result["pretrain"] = _pretrain_eval(model_dir)
    scores.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{strategy}: done in {sum(timings.values()):.0f}s", file=sys.stderr, flush=True)
    return result


def _pretrain_eval(model_dir: Path) -> dict:
    metrics = model_dir / "metrics.json"
    if not metrics.exists():
        return {}
    data = json.loads(metrics.read_text())
    return data.get("eval", data) if isinstance(data, dict) else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="targets+uniform,uniform,targets,span,none")
    parser.add_argument("--parallel", type=int, default=1, help="strategies run at once (they share the GPU)")
    parser.add_argument("--config", default="medium", help="model preset or config.json")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "models" / "bert-base-chinese")
    parser.add_argument("--g2pl", type=Path, default=DATA / "g2pL")
    parser.add_argument("--cpp", type=Path, default=DATA / "cpp")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--pretrain-steps", type=int, default=4000)
    parser.add_argument("--pretrain-batch-size", type=int, default=128)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--finetune-steps", type=int, default=0, help="> 0 overrides --epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--class-weights", default="balanced", choices=["none", "balanced"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N test examples")
    parser.add_argument("--small", action="store_true", help="CPU smoke run: tiny preset, a few steps, 200 test rows")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-polyphone"))
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)
    args.extra_train = []
    if args.small:
        args.config, args.pretrain_steps, args.finetune_steps, args.limit = "tiny", 20, 20, 200
        args.extra_train = ["--device", "cpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    corpus, targets = write_corpus(args.out, args.g2pl, args.cpp)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s != "none" and s not in STRATEGY_FLAGS]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from none, {', '.join(STRATEGY_FLAGS)}")

    with ThreadPoolExecutor(max_workers=max(args.parallel, 1)) as pool:
        futures = {s: pool.submit(strategy_run, s, args, corpus, targets) for s in strategies}
        results = {s: f.result() for s, f in futures.items()}

    sets = list(next(iter(results.values()))["accuracy"]["pypinyin"])
    print(f"\nconfig {args.config}, pre-training {args.pretrain_steps} steps x {args.pretrain_batch_size}, "
          f"fine-tuning {args.finetune_steps or args.epochs} {'steps' if args.finetune_steps else 'epochs'}\n")
    print("| method | " + " | ".join(sets) + " | pre-train MLM acc | minutes |")
    print("|---" * (len(sets) + 3) + "|")
    baselines = next(iter(results.values()))["accuracy"]
    for name in ("majority (g2pL train)", "majority (CPP dev)", "pypinyin"):
        row = baselines[name]
        print(f"| {name} | " + " | ".join(f"{100 * row[s]:.2f}" if s in row else "-" for s in sets) + " | - | - |")
    for strategy, result in results.items():
        row = result["accuracy"]["bertkit"]
        mlm = result["pretrain"].get("mlm_accuracy")
        minutes = sum(result["timings"].values()) / 60
        print(f"| bertkit, {strategy} | " + " | ".join(f"{100 * row[s]:.2f}" for s in sets)
              + f" | {'-' if mlm is None else f'{100 * mlm:.1f}'} | {minutes:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
