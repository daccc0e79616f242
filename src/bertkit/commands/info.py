"""`bertkit info MODEL`: a checkpoint's shape, parameter count and heads, without building the model
(for a TF checkpoint the .index file alone is enough)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="HF directory, hub id, TF checkpoint prefix or directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from bertkit.modeling.checkpoints import model_info

    info = model_info(args.model)
    info.update(run_summary(args.model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    rows = [
        ("path", info["path"]), ("format", f"{info['format']} ({info['weights']})"),
        ("architectures", ", ".join(info["architectures"] or []) or "-"),
        ("layers", info["layers"]), ("hidden", info["hidden"]), ("heads", info["heads"]),
        ("intermediate", info["intermediate"]), ("vocab", info["vocab"]),
        ("max positions", info["max_positions"]), ("activation", info["hidden_act"]),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
        ("heads present", ", ".join(info["heads_present"]) or "none (encoder only)"),
    ]
    if "task" in info:  # a bertkit run: what it was fine-tuned for, and how it scored
        labels = info["labels"]
        shown = ("; ".join(f"{task}: {', '.join(map(str, names)) if names else '-'}" for task, names in labels.items())
                 if isinstance(labels, dict) else ", ".join(map(str, labels)) if labels else "-")
        rows += [("task", info["task"]), ("labels", shown)]
        rows += [(f"{split} metrics", ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if isinstance(v, float)))
                 for split, scores in info["metrics"].items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def run_summary(model: str) -> dict:
    """For a bertkit run directory: its task(s), labels and the metrics of its metrics.json; {} otherwise."""
    from pathlib import Path

    from bertkit.commands.common import BERTKIT_JSON

    directory = Path(model)
    if not (directory / BERTKIT_JSON).is_file():
        return {}
    saved = json.loads((directory / BERTKIT_JSON).read_text(encoding="utf-8"))
    tasks = saved.get("tasks") or [saved.get("task")]
    metrics_file = directory / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    scored = {split: values for split, values in metrics.items() if isinstance(values, dict) and split != "evaluated"
              and any(isinstance(v, float) for v in values.values())}
    heads = saved.get("heads") or {}
    labels = {task: head.get("labels") for task, head in heads.items()} if heads else saved.get("labels")
    return {"task": ", ".join(t for t in tasks if t), "labels": labels, "metrics": scored}
