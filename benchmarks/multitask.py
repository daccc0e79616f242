"""Multi-task vs single-task fine-tuning on GLUE dev: SST-2 + RTE + STS-B + MRPC with one shared
encoder against four separate runs with the same settings.

    python benchmarks/multitask.py                      # GPU: all-MiniLM-L6-v2, full train sets, 3 epochs, bf16
    python benchmarks/multitask.py --small              # CPU smoke run: 64 train / 40 dev rows per task, 1 epoch

Settings shared by every run: lr 5e-5, batch 32, max length 128, warmup 10%, seed 42, evaluation
at the end of each epoch, best epoch kept. The multi-task run uses proportional sampling by default
(`--task-sampling`), so its epoch covers the same number of examples as the four single-task
epochs together. Each dev score is the task's GLUE main metric (accuracy, Pearson r, F1) at the
checkpoint kept by the run: the best epoch by that task's metric for single-task runs, by the
average of the four for the multi-task run. Prints a Markdown table; the last column is the ratio
multi / single.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TASKS = {"sst2": ("SST-2", "accuracy"), "rte": ("RTE", "accuracy"), "stsb": ("STS-B", "pearson"),
         "mrpc": ("MRPC", "f1")}


def slice_glue(src: Path, dst: Path, n_train: int, n_dev: int) -> Path:
    """A glue_data-style copy with the first rows of each task's train and dev files."""
    for folder, _ in TASKS.values():
        (dst / folder).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            lines = (src / folder / f"{split}.tsv").read_text(encoding="utf-8-sig").splitlines()
            (dst / folder / f"{split}.tsv").write_text("\n".join(lines[:1 + n]) + "\n", encoding="utf-8")
    return dst


def finetune(tasks: list[str], common: list[str], out: Path, extra: list[str]) -> tuple[dict, float]:
    """One `bertkit finetune` in a child process (so runs can share a GPU side by side)."""
    argv = [sys.executable, "-m", "bertkit.cli", "finetune", *[a for t in tasks for a in ("--task", t)], *common,
            "--output-dir", str(out), *extra]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed; see {out.parent / f'{out.name}.log'}")
    return json.loads((out / "metrics.json").read_text())["dev"], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--glue", default=str(SHARED / "data" / "glue"), help="glue_data root")
    parser.add_argument("--small", action="store_true", help="CPU smoke run on small slices")
    parser.add_argument("--epochs", type=float, default=None, help="default: 3 (1 with --small)")
    parser.add_argument("--max-steps", type=int, default=0, help="a step budget per run instead of epochs")
    parser.add_argument("--task-sampling", default="proportional", choices=("proportional", "uniform", "temperature"))
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--precision", default=None, help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parallel", action="store_true",
                        help="run the five fine-tunings at once on the one device (scores unchanged; wall times "
                             "are then contended and not comparable)")
    parser.add_argument("--work-dir", default=None, help="keep run directories here (default: a temp dir)")
    args = parser.parse_args()

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bertkit-mt-"))
    work.mkdir(parents=True, exist_ok=True)
    glue = Path(args.glue)
    if args.small:
        glue = slice_glue(glue, work / "glue", n_train=64, n_dev=40)
    epochs = args.epochs if args.epochs is not None else (1.0 if args.small else 3.0)
    common = ["--model", args.model, "--data-dir", str(glue), "--lr", "5e-5", "--batch-size", "32",
              "--max-seq-length", "128", "--warmup-ratio", "0.1", "--seed", "42", "--eval-every", "epoch",
              "--device", args.device, "--no-progress", "--log-every", "50"]
    common += ["--max-steps", str(args.max_steps)] if args.max_steps else ["--epochs", str(epochs)]
    if args.precision:
        common += ["--precision", args.precision]

    names = list(TASKS)
    runs = {task: ([task], work / f"single-{task}", []) for task in names}
    runs["multi"] = (names, work / "multi", ["--task-sampling", args.task_sampling, "--temperature", str(args.temperature)])
    with ThreadPoolExecutor(max_workers=len(runs) if args.parallel else 1) as pool:
        futures = {name: pool.submit(finetune, tasks, common, out, extra) for name, (tasks, out, extra) in runs.items()}
        done = {name: future.result() for name, future in futures.items()}
    single = {task: (done[task][0][TASKS[task][1]], done[task][1]) for task in names}
    multi_metrics, multi_seconds = done["multi"]

    print(f"\nGLUE dev, {Path(args.model).name}, {'small slices, ' if args.small else ''}"
          f"{'max-steps ' + str(args.max_steps) if args.max_steps else f'{epochs:g} epochs'}, "
          f"multi-task sampling: {args.task_sampling}\n")
    print("| task | metric | single-task | multi-task | multi / single |")
    print("|---|---|---|---|---|")
    singles, multis = [], []
    for task in names:
        metric = TASKS[task][1]
        s, m = single[task][0], multi_metrics[f"{task}/{metric}"]
        singles.append(s)
        multis.append(m)
        print(f"| {task} | {metric} | {s:.4f} | {m:.4f} | {m / s if s else float('nan'):.3f} |")
    s_avg, m_avg = sum(singles) / len(singles), sum(multis) / len(multis)
    print(f"| average | main metrics | {s_avg:.4f} | {m_avg:.4f} | {m_avg / s_avg if s_avg else float('nan'):.3f} |")
    single_time = sum(t for _, t in single.values())
    contended = " (runs side by side)" if args.parallel else ""
    print(f"| wall time{contended} | s | {single_time:.0f} (4 runs) | {multi_seconds:.0f} | "
          f"{multi_seconds / single_time:.3f} |")
    if not args.work_dir and args.small:
        shutil.rmtree(work, ignore_errors=True)  # a smoke run's directories are not worth keeping
    else:
        print(f"\nrun directories: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
