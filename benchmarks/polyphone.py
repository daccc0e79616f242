"""Polyphone disambiguation accuracy: baselines and a fine-tuned bertkit model on the same test sets.

    python benchmarks/polyphone.py                         # baselines only (CPU, ~1 min)
    python benchmarks/polyphone.py --model runs/polyphone  # + a model fine-tuned with --task polyphone

Test sets: g2pL test (114 characters, all seen in g2pL train), CPP test (623 characters; CPP's
train split is not in shared/, so only 2,257 of its 10,254 sentences have a character that g2pL
train covers; that subset is scored on its own as "CPP test ∩ g2pL chars").

Methods:
- majority (g2pL train): the most frequent reading of each character in g2pL train; a character
  never seen there gets no prediction and counts as wrong.
- majority (CPP dev): the same from CPP dev (disjoint from CPP test), the closest stand-in for the
  missing CPP train split; shown for CPP test only.
- pypinyin: phrase-aware `pinyin(sentence, style=TONE3, neutral_tone_with_five=True)`, reading at
  the target index; its "v" for ü is rewritten to the datasets' "u:".
- bertkit: the model's candidate-masked argmax; candidates from g2pL train (as in training).

Every accuracy counts all examples of the set; the last column is the ratio to majority (g2pL train).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from bertkit.tasks.polyphone import PolyphoneExample, majority_readings, normalize_reading, read_examples

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "polyphone"

Predictor = Callable[[Sequence[PolyphoneExample]], list[str | None]]


def majority_predictor(train: Sequence[PolyphoneExample]) -> Predictor:
    table = majority_readings(train)
    return lambda examples: [table.get(ex.char) for ex in examples]


def pypinyin_predictor(examples: Sequence[PolyphoneExample]) -> list[str | None]:
    from pypinyin import Style, pinyin

    out: list[str | None] = []
    for ex in examples:
        # errors=...: one item per non-Chinese character too, so indices stay character indices
        # (by default pypinyin returns a run such as "ABC 12" as a single item).
        readings = pinyin(ex.text, style=Style.TONE3, neutral_tone_with_five=True,
                          errors=lambda run: [[c] for c in run])
        if len(readings) != len(ex.text):
            raise RuntimeError(f"pypinyin returned {len(readings)} items for {len(ex.text)} characters "
                               f"in {ex.id}; the index mapping would be wrong")
        out.append(normalize_reading(readings[ex.position][0]))
    return out


def bertkit_predictor(model_dir: Path, g2pl_dir: Path, batch_size: int, device: str) -> Predictor:
    import torch

    from bertkit.config import ModelConfig
    from bertkit.modeling.heads import model_class_for_head
    from bertkit.tasks.base import TaskOptions
    from bertkit.tasks.polyphone import PolyphoneTask
    from bertkit.tokenization import Tokenizer

    config = ModelConfig.from_json_file(model_dir / "config.json")
    if not config.id2label:
        raise ValueError(f"{model_dir}/config.json has no id2label; was it fine-tuned with --task polyphone?")
    task = PolyphoneTask(TaskOptions(data_dir=str(g2pl_dir)))
    task.set_label_names([config.id2label[i] for i in range(len(config.id2label))])
    tokenizer = Tokenizer.from_pretrained(str(model_dir))
    model = model_class_for_head("polyphone").from_pretrained(str(model_dir)).to(device).eval()

    def predict(examples: Sequence[PolyphoneExample]) -> list[str | None]:
        features = task.encode(list(examples), tokenizer, 128)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                batch = task.collate(features[start:start + batch_size])
                batch = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "class_weights")}
                outputs.extend(task.gather_outputs(batch, model(**batch)))
        labels = task.label_names()
        return [labels[p] for p in task.postprocess(list(examples), features, outputs)]

    return predict


def accuracy(examples: Sequence[PolyphoneExample], predictions: Sequence[str | None]) -> float:
    return sum(p == ex.label for ex, p in zip(examples, predictions)) / len(examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--g2pl", type=Path, default=DATA / "g2pL", help="g2pL data directory")
    parser.add_argument("--cpp", type=Path, default=DATA / "cpp", help="CPP data directory (dev, test)")
    parser.add_argument("--model", type=Path, default=None, help="a model fine-tuned with --task polyphone")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N examples of each set (smoke runs)")
    args = parser.parse_args(argv)

    train = read_examples(args.g2pl / "train")
    g2pl_chars = {ex.char for ex in train}
    cpp_test = read_examples(args.cpp / "test")
    sets = {
        "g2pL test": read_examples(args.g2pl / "test"),
        "CPP test": cpp_test,
        "CPP test ∩ g2pL chars": [ex for ex in cpp_test if ex.char in g2pl_chars],
    }
    if args.limit > 0:
        sets = {name: examples[:args.limit] for name, examples in sets.items()}
    methods: dict[str, Predictor] = {
        "majority (g2pL train)": majority_predictor(train),
        "majority (CPP dev)": majority_predictor(read_examples(args.cpp / "dev")),
        "pypinyin": pypinyin_predictor,
    }
    if args.model is not None:
        methods["bertkit"] = bertkit_predictor(args.model, args.g2pl, args.batch_size, args.device)

    results: dict[str, dict[str, float]] = {}
    for method, predict in methods.items():
        for name, examples in sets.items():
            if method == "majority (CPP dev)" and not name.startswith("CPP"):
                continue
            start = time.perf_counter()
            results.setdefault(method, {})[name] = accuracy(examples, predict(examples))
            print(f"  {method} on {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr)

    base = results["majority (g2pL train)"]
    names = list(sets)
    print(f"{'method':<24}" + "".join(f"{n:>24}" for n in names))
    print(f"{'(examples)':<24}" + "".join(f"{len(sets[n]):>24,}" for n in names))
    for method, row in results.items():
        cells = [f"{row[n]:.4f} (x{row[n] / base[n]:.2f})" if n in row else "-" for n in names]
        print(f"{method:<24}" + "".join(f"{c:>24}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"examples": {n: len(v) for n, v in sets.items()},
                                         "accuracy": results}, indent=2, ensure_ascii=False) + "\n")
    return 0


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
