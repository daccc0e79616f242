"""Multi-task fine-tuning: task sampling (formulas, no task runs dry, determinism), the shared-encoder
model (mixed eval batches == per-task batches), and a short SST-2 + RTE + STS-B run on real GLUE
slices whose run directory loads per task (evaluate/predict CLI) and in `transformers.AutoModel`.
A tiny random BERT with the real uncased vocab keeps it fast on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main
from bertkit.config import TrainConfig, preset
from bertkit.modeling.heads import BertForSequenceClassification
from bertkit.tasks import TaskOptions, get_task_class
from bertkit.tasks.multitask import (HeadSpec, MultiTask, MultiTaskModel, load_head_model, parse_task_batch_sizes,
                                     sampling_probabilities)
from bertkit.tokenization import Tokenizer
from bertkit.training.trainer import train

SLICES = {"SST-2": (96, 40), "RTE": (48, 30), "STS-B": (64, 40)}  # (train rows, dev rows)


@pytest.fixture(scope="module")
def glue_slices(tmp_path_factory, shared_dir: Path) -> Path:
    """A glue_data-style root with the first rows of the real SST-2, RTE and STS-B train files
    (dev = the rows after them, so labels are real and disjoint from training)."""
    root = tmp_path_factory.mktemp("glue")
    for name, (n_train, n_dev) in SLICES.items():
        lines = (shared_dir / "data" / "glue" / name / "train.tsv").read_text(encoding="utf-8").splitlines()
        (root / name).mkdir()
        (root / name / "train.tsv").write_text("\n".join(lines[:1 + n_train]) + "\n", encoding="utf-8")
        dev = [lines[0]] + lines[1 + n_train:1 + n_train + n_dev]
        (root / name / "dev.tsv").write_text("\n".join(dev) + "\n", encoding="utf-8")
    return root


def glue_tasks(*names: str, data_dir: Path | None = None, max_len: int = 64):
    return [get_task_class(n)(TaskOptions(data_dir=str(data_dir) if data_dir else None, max_seq_length=max_len))
            for n in names]


# ---- sampling -------------------------------------------------------------------------------------
def test_sampling_probabilities_follow_the_formulas() -> None:
    sizes = [6000, 600, 60]
    assert np.allclose(sampling_probabilities(sizes, "proportional"), np.array(sizes) / 6660)
    assert np.allclose(sampling_probabilities(sizes, "uniform"), [1 / 3] * 3)
    root = np.array(sizes) ** 0.5
    assert np.allclose(sampling_probabilities(sizes, "temperature", 2.0), root / root.sum())
    assert np.allclose(sampling_probabilities(sizes, "temperature", 1.0), sampling_probabilities(sizes, "proportional"))
    with pytest.raises(ValueError, match="--temperature must be > 0"):
        sampling_probabilities(sizes, "temperature", 0.0)
    with pytest.raises(ValueError, match="proportional, uniform, temperature"):
        sampling_probabilities(sizes, "annealed")


@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_drawn_task_counts_match_the_distribution(sampling: str) -> None:
    sizes, batch = [2000, 400, 40], 8
    multi = MultiTask(glue_tasks("sst2", "rte", "stsb"), sizes, [batch] * 3, batch, sampling, temperature=3.0)
    assert multi.batches_per_epoch() == 250 + 50 + 5
    offsets = np.cumsum([0] + sizes)
    counts = np.zeros(3)
    for epoch in range(100):  # 30,500 draws: the std of a share is <= 0.003
        for b in multi.epoch_batches(epoch, seed=3, global_batch=batch):
            k = int(np.searchsorted(offsets, b[0], side="right") - 1)
            assert offsets[k] <= b.min() and b.max() < offsets[k + 1]  # one task per batch
            counts[k] += 1
    expected = sampling_probabilities(sizes, sampling, 3.0)
    assert np.abs(counts / counts.sum() - expected).max() < 0.015, (counts / counts.sum(), expected)


def test_no_task_runs_dry_and_each_pass_covers_its_task() -> None:
    # Uniform sampling over sizes 1000/20/5 gives the small tasks ~45 batches of 4 each per epoch:
    # 9x and 36x their data. Every batch must still be full and each pass a permutation.
    sizes, batch = [1000, 20, 5], 4
    multi = MultiTask(glue_tasks("sst2", "rte", "stsb"), sizes, [batch] * 3, batch, "uniform")
    batches = multi.epoch_batches(0, seed=1, global_batch=batch)
    assert len(batches) == 250 + 5 + 2
    assert all(len(b) == batch for b in batches)
    offsets = np.cumsum([0] + sizes)
    for k in (1, 2):
        stream = np.concatenate([b for b in batches if offsets[k] <= b[0] < offsets[k + 1]]) - offsets[k]
        assert len(stream) > 5 * sizes[k]  # the task restarted several times
        full_passes = len(stream) // sizes[k]
        for p in range(full_passes):
            assert sorted(stream[p * sizes[k]:(p + 1) * sizes[k]].tolist()) == list(range(sizes[k]))
        passes = [tuple(stream[p * sizes[k]:(p + 1) * sizes[k]]) for p in range(full_passes)]
        assert len(set(passes)) > 1  # each pass is reshuffled


def test_plan_is_deterministic_in_seed_and_epoch_and_scales_with_world_size() -> None:
    multi = MultiTask(glue_tasks("sst2", "rte"), [300, 50], [8, 4], 8, "temperature", 2.0)
    a = multi.epoch_batches(2, seed=5, global_batch=8)
    b = multi.epoch_batches(2, seed=5, global_batch=8)
    assert len(a) == len(b) == 38 + 13 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, multi.epoch_batches(3, seed=5, global_batch=8)))
    assert any(not np.array_equal(x, y) for x, y in zip(a, multi.epoch_batches(2, seed=6, global_batch=8)))
    assert {len(x) for x in a} == {8, 4}  # per-task batch sizes
    two_ranks = multi.epoch_batches(2, seed=5, global_batch=16)  # 2 processes x 8
    assert {len(x) for x in two_ranks} == {16, 8}


def test_task_batch_size_flag() -> None:
    assert parse_task_batch_sizes(["rte=16", "sts-b=8"], ["sst2", "rte", "stsb"], 32) == [32, 16, 8]
    with pytest.raises(ValueError, match="not one of the --task names"):
        parse_task_batch_sizes(["cola=4"], ["sst2", "rte"], 32)
    with pytest.raises(ValueError, match="expected TASK=N"):
        parse_task_batch_sizes(["rte:16"], ["sst2", "rte"], 32)


# ---- the model ---------------------------------------------------------------------------------------
def test_mixed_eval_batch_equals_per_task_batches(tiny_model_dir: Path, glue_slices: Path) -> None:
    tasks = glue_tasks("sst2", "rte", "stsb", data_dir=glue_slices)
    torch.manual_seed(0)
    model = MultiTaskModel.from_pretrained(tiny_model_dir, [HeadSpec.from_task(t) for t in tasks]).eval()
    tok = Tokenizer.from_pretrained(tiny_model_dir)
    features = []
    for k, task in enumerate(tasks):
        features += [{**f, "task_index": k} for f in task.encode(task.read("dev")[:6], tok, 64)]
    multi = MultiTask(tasks, [1, 1, 1], [8] * 3, 8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(features))
    with torch.no_grad():
        mixed_batch = multi.collate([features[i] for i in order])
        assert "single_task" not in mixed_batch
        mixed = model(**mixed_batch)
        rows = multi.gather_outputs(mixed_batch, mixed)
        losses = []
        for k in range(3):
            mine = [i for i in order if features[i]["task_index"] == k]
            single_batch = multi.collate([features[i] for i in mine])
            single = model(**single_batch)
            single_rows = multi.gather_outputs(single_batch, single)
            for pos, (logits, loss) in zip(mine, single_rows):
                assert np.allclose(rows[list(order).index(pos)][0], logits, atol=1e-5)
                assert rows[list(order).index(pos)][1] == pytest.approx(loss, abs=1e-5)
            # Each row's loss is its task head's loss: their mean is the task batch's loss.
            assert np.mean([loss for _, loss in single_rows]) == pytest.approx(single.loss.item(), abs=1e-5)
            losses.append(single.loss * len(mine))
    assert {r[0].shape[0] for r in rows} == {1, 2}  # each row cut to its task's label count
    assert torch.allclose(mixed.loss, sum(losses) / len(features), atol=1e-5)


# ---- a real (tiny) run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multitask_run(tiny_model_dir: Path, glue_slices: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mt-run")
    rc = main(["finetune", "--task", "sst2", "--task", "rte", "--task", "sts-b", "--model", str(tiny_model_dir),
               "--data-dir", str(glue_slices), "--output-dir", str(out), "--batch-size", "16",
               "--max-seq-length", "48", "--lr", "1e-3", "--epochs", "2", "--eval-every", "10",
               "--task-sampling", "temperature", "--temperature", "2", "--device", "cpu", "--seed", "3",
               "--no-progress", "--log-every", "5"])
    assert rc == 0
    return out


def test_run_reports_per_task_and_average_metrics(multitask_run: Path) -> None:
    metrics = json.loads((multitask_run / "metrics.json").read_text())
    dev = metrics["dev"]
    for key in ("sst2/accuracy", "rte/accuracy", "stsb/pearson", "stsb/spearman", "average",
                "sst2/loss", "rte/loss", "stsb/loss"):
        assert key in dev, sorted(dev)
    assert "loss" not in dev  # cross entropy and squared error are not averaged together
    assert dev["average"] == pytest.approx(np.mean([dev["sst2/accuracy"], dev["rte/accuracy"], dev["stsb/pearson"]]))
    # 96/16 + 48/16 + 64/16 = 6 + 3 + 4 = 13 micro-batches per epoch, 2 epochs
    assert metrics["steps"] == 26
    assert [r["step"] for r in metrics["history"]] == [10, 20, 26]
    assert metrics["best_step"] == max(metrics["history"], key=lambda r: r["eval"]["average"])["step"]
    log = [json.loads(line) for line in (multitask_run / "log.jsonl").read_text().splitlines()]
    assert any("eval" in r and "rte/accuracy" in r["eval"] for r in log)
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.isfinite(losses).all()
    info = json.loads((multitask_run / "bertkit.json").read_text())
    assert info["tasks"] == ["sst2", "rte", "stsb"]
    assert info["heads"]["rte"]["labels"] == ["entailment", "not_entailment"]
    assert info["heads"]["stsb"]["head"] == "regression" and info["heads"]["stsb"]["num_labels"] == 1
    p = np.array([96, 48, 64]) ** 0.5
    shares = info["sampling_probabilities"]
    assert [shares[t] for t in ("sst2", "rte", "stsb")] == pytest.approx(list(p / p.sum()), abs=1e-6)


def test_run_dir_holds_one_weights_file_with_encoder_and_heads(multitask_run: Path) -> None:
    state = load_file(str(multitask_run / "model.safetensors"))
    assert "bert.embeddings.word_embeddings.weight" in state
    assert state["heads.sst2.classifier.weight"].shape == (2, 128)
    assert state["heads.rte.classifier.weight"].shape == (2, 128)
    assert state["heads.stsb.classifier.weight"].shape == (1, 128)
    assert not any(k.startswith("classifier.") for k in state)  # the base model's head is not carried


def test_transformers_automodel_loads_the_shared_encoder(multitask_run: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModel.from_pretrained(str(multitask_run)).eval()
    ours = load_head_model(multitask_run, "rte", glue_tasks("rte")[0]).eval()
    ids = torch.tensor([[101, 7592, 2088, 102, 2129, 2024, 102]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        a = hf(input_ids=ids, token_type_ids=types).last_hidden_state
        b = ours.bert(ids, None, types).last_hidden_state
    assert (a - b).abs().max() < 1e-5


def test_evaluate_and_predict_pick_the_tasks_head(multitask_run: Path, glue_slices: Path, tmp_path: Path) -> None:
    saved = json.loads((multitask_run / "metrics.json").read_text())["dev"]
    for task, key in (("rte", "accuracy"), ("stsb", "pearson"), ("sst2", "accuracy")):
        out = tmp_path / f"{task}.json"
        assert main(["evaluate", "--task", task, "--model", str(multitask_run), "--data-dir", str(glue_slices),
                     "--device", "cpu", "--output", str(out)]) == 0
        # The single-task model built from the shared weights reproduces the multi-task eval. Batches
        # are composed (and padded) differently, so STS-B scores agree to fp32 noise (~6e-6 measured).
        assert json.loads(out.read_text())[f"{task}/dev"][key] == pytest.approx(saved[f"{task}/{key}"], abs=1e-4)
    pred = tmp_path / "preds" / "RTE.tsv"
    assert main(["predict", "--task", "rte", "--model", str(multitask_run), "--data-dir", str(glue_slices),
                 "--split", "dev", "--device", "cpu", "--output", str(pred)]) == 0
    lines = pred.read_text().splitlines()
    assert len(lines) == 1 + SLICES["RTE"][1]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "not_entailment"}
    assert main(["evaluate", "--task", "cola", "--model", str(multitask_run), "--data-dir", str(glue_slices),
                 "--device", "cpu"]) == 1  # no cola head: an error, not a fresh random head
    for command in ("evaluate", "predict"):  # without --task: an error, not the first task's result alone
        assert main([command, "--model", str(multitask_run), "--data-dir", str(glue_slices), "--device", "cpu",
                     "--output", str(tmp_path / "all")]) == 1


def test_convert_task_exports_one_tasks_model_for_transformers_and_evaluate(
        multitask_run: Path, glue_slices: Path, tmp_path: Path, capsys) -> None:
    """`convert RUN DST --task T`: the shared encoder with T's head as a single-task run directory;
    transformers loads it with T's labels and the same logits, and `evaluate` needs no --task."""
    transformers = pytest.importorskip("transformers")
    saved = json.loads((multitask_run / "metrics.json").read_text())["dev"]
    for task, key, labels in (("rte", "accuracy", ["entailment", "not_entailment"]), ("stsb", "pearson", None)):
        dst = tmp_path / task
        assert main(["convert", str(multitask_run), str(dst), "--task", task]) == 0
        hf = transformers.BertForSequenceClassification.from_pretrained(str(dst)).eval()
        ours = load_head_model(multitask_run, task, glue_tasks(task)[0]).eval()
        ids = torch.tensor([[101, 7592, 2088, 102, 2129, 2024, 102]])
        types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
        with torch.no_grad():
            expected = ours(input_ids=ids, token_type_ids=types).logits
            assert (hf(input_ids=ids, token_type_ids=types).logits - expected).abs().max() < 1e-5
        if labels is None:
            assert hf.config.num_labels == 1 and hf.config.problem_type == "regression"
        else:
            assert [hf.config.id2label[i] for i in range(len(labels))] == labels
        out = tmp_path / f"{task}.json"
        assert main(["evaluate", "--model", str(dst), "--data-dir", str(glue_slices), "--device", "cpu",
                     "--output", str(out)]) == 0
        assert json.loads(out.read_text())["dev"][key] == pytest.approx(saved[f"{task}/{key}"], abs=1e-4)
    capsys.readouterr()
    assert main(["convert", str(multitask_run), str(tmp_path / "no-task")]) == 1
    assert "multi-task run (sst2, rte, stsb): pass --task T" in capsys.readouterr().err
    assert main(["convert", str(multitask_run), str(tmp_path / "cola"), "--task", "cola"]) == 1
    assert "has heads for sst2, rte, stsb" in capsys.readouterr().err
    assert not (tmp_path / "cola").exists() and not (tmp_path / "no-task").exists()


def test_evaluate_merges_into_metrics_json_by_task(multitask_run: Path, glue_slices: Path, tmp_path: Path) -> None:
    """`evaluate` wrote metrics.json["dev"] = the last task's metrics: after --task rte then --task
    stsb the training's dev entry (sst2/, rte/, stsb/ and average: 7 keys) was {"pearson", "spearman",
    "corr"}, with no word of the task."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(multitask_run, run)
    before = json.loads((run / "metrics.json").read_text())
    for task in ("rte", "stsb"):
        assert main(["evaluate", "--task", task, "--model", str(run), "--data-dir", str(glue_slices),
                     "--device", "cpu"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert {k: after[k] for k in before} == before  # the training's entries, untouched
    assert after["rte/dev"]["accuracy"] == pytest.approx(before["dev"]["rte/accuracy"], abs=1e-9)
    assert after["stsb/dev"]["pearson"] == pytest.approx(before["dev"]["stsb/pearson"], abs=1e-4)
    # One task's head evaluated alone has the loss the multi-task evaluation reported for it.
    assert after["rte/dev"]["loss"] == pytest.approx(before["dev"]["rte/loss"], rel=1e-4)
    assert after["stsb/dev"]["loss"] == pytest.approx(before["dev"]["stsb/loss"], rel=1e-4)
    assert after["evaluated"]["rte/dev"] == {"task": "rte", "split": "dev", "data_dir": str(glue_slices)}
    # Single-task files keep the layout finetune writes; another task's numbers never replace them.
    from bertkit.commands.evaluate import metrics_key

    assert metrics_key({"task": "rte", "dev": {}}, "rte", "dev", multi_task_run=False) == "dev"
    assert metrics_key({}, "rte", "dev", multi_task_run=False) == "dev"
    assert metrics_key({"task": "rte", "dev": {}}, "mrpc", "dev", multi_task_run=False) == "mrpc/dev"


def test_a_finished_run_resumed_again_keeps_evaluate_entries(tmp_path: Path) -> None:
    """finetune --resume on a finished multi-task run rewrote metrics.json from scratch: rte/dev,
    stsb/dev and "evaluated" were gone although the model had not changed. An entry the training
    writes anew (single-task "dev") takes its place and loses its "evaluated" record."""
    from bertkit.commands.common import write_run_metrics

    path = tmp_path / "metrics.json"
    earlier = {"tasks": ["rte", "stsb"], "dev": {"average": 0.5}, "rte/dev": {"accuracy": 0.6},
               "stsb/dev": {"pearson": 0.7}, "evaluated": {"rte/dev": {"task": "rte", "split": "dev"},
                                                          "stsb/dev": {"task": "stsb", "split": "dev"}}}
    path.write_text(json.dumps(earlier))
    write_run_metrics(path, {"tasks": ["rte", "stsb"], "dev": {"average": 0.5}}, model_kept=True)
    assert json.loads(path.read_text()) == earlier
    path.write_text(json.dumps({"task": "rte", "dev": {"accuracy": 0.4}, "evaluated": {"dev": {"task": "rte"}}}))
    write_run_metrics(path, {"task": "rte", "dev": {"accuracy": 0.6}}, model_kept=True)
    assert json.loads(path.read_text()) == {"task": "rte", "dev": {"accuracy": 0.6}}
    path.write_text(json.dumps(earlier))
    write_run_metrics(path, {"tasks": ["rte", "stsb"], "dev": {"average": 0.9}}, model_kept=False)  # trained on
    assert json.loads(path.read_text()) == {"tasks": ["rte", "stsb"], "dev": {"average": 0.9}}


def test_single_task_finetune_continues_from_the_shared_model(multitask_run: Path, glue_slices: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "rte"
    assert main(["finetune", "--task", "rte", "--model", str(multitask_run), "--data-dir", str(glue_slices),
                 "--output-dir", str(out), "--batch-size", "16", "--max-seq-length", "48", "--max-steps", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    shared = load_file(str(multitask_run / "model.safetensors"))
    single = BertForSequenceClassification.from_pretrained(out)
    assert single.config.num_labels == 2
    assert "dev" in json.loads((out / "metrics.json").read_text())
    # the encoder started from the shared one (two small steps move it only a little)
    diff = (single.bert.embeddings.word_embeddings.weight - shared["bert.embeddings.word_embeddings.weight"]).abs()
    assert diff.max() < 0.01


def test_resume_equals_uninterrupted(tiny_model_dir: Path, glue_slices: Path, tmp_path: Path) -> None:
    tasks = glue_tasks("sst2", "rte", data_dir=glue_slices)
    tok = Tokenizer.from_pretrained(tiny_model_dir)
    features = []
    for k, task in enumerate(tasks):
        features += [{**f, "task_index": k} for f in task.encode(task.read("train")[:24], tok, 32)]
    specs = [HeadSpec.from_task(t) for t in tasks]

    def run(out: Path, stop: int | None, resume: bool = False):
        torch.manual_seed(0)
        model = MultiTaskModel.from_pretrained(tiny_model_dir, specs)
        multi = MultiTask(tasks, [24, 24], [8, 4], 8, "uniform")  # 3 + 6 micro-batches per epoch
        config = TrainConfig(output_dir=str(out), epochs=1, batch_size=8, lr=1e-3, device="cpu", seed=9,
                             eval_every="none", save_every=3, progress=False, resume=resume)
        return train(multi, model, features, None, config, stop_after_steps=stop).model

    full = run(tmp_path / "full", None)
    run(tmp_path / "cut", 5)  # killed mid-epoch: resumes from the step-3 checkpoint
    resumed = run(tmp_path / "cut", None, resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_multitask_requests_fail_up_front(tiny_model_dir: Path, glue_slices: Path, tmp_path: Path,
                                             capsys) -> None:
    base = ["finetune", "--model", str(tiny_model_dir), "--data-dir", str(glue_slices), "--output-dir",
            str(tmp_path / "o"), "--device", "cpu"]
    assert main([*base, "--task", "rte", "--task", "rte"]) == 1
    assert "given more than once" in capsys.readouterr().err
    assert main([*base, "--task", "rte", "--task", "sst2", "--dev-file", "x.tsv"]) == 1
    assert "--dev-file names one file" in capsys.readouterr().err
    assert main([*base, "--task", "rte", "--task", "squad"]) == 1
    assert "multi-task training supports" in capsys.readouterr().err
    assert main([*base, "--task", "rte", "--task", "stsb", "--best-metric", "stsb/pearsn"]) == 1
    assert ("--best-metric stsb/pearsn: the evaluations of this run report average, rte/accuracy, rte/loss, "
            "stsb/corr, stsb/loss, stsb/pearson, stsb/spearman (did you mean stsb/pearson?)") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="`task`"):
        MultiTaskModel(preset("tiny", vocab_size=100), [HeadSpec("a", "regression", 1, None, "regression")])(
            torch.ones(1, 3, dtype=torch.long))


def test_multi_task_options_that_would_do_nothing_are_refused(tmp_path, capsys) -> None:
    base = ["finetune", "--model", str(tmp_path / "m"), "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--task", "rte", "--task-sampling", "temperature", "--temperature", "3"]) == 1
    assert "--task-sampling, --temperature: multi-task options; this run has one --task" in capsys.readouterr().err
    assert main([*base, "--task", "rte", "--task", "sst2", "--temperature", "5"]) == 1
    assert "--temperature applies to --task-sampling temperature, not proportional" in capsys.readouterr().err
