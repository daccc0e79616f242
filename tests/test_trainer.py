"""The training loop: seeded determinism, exact resume (also after SIGKILL), checkpoint atomicity,
accumulation, precision options and the run directory. Uses a tiny random BERT with the real
uncased vocab on real SST-2 rows so that it runs in seconds on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit.cli import main
from bertkit.config import TrainConfig
from bertkit.modeling.heads import BertForSequenceClassification
from bertkit.tasks import TaskOptions, get_task_class
from bertkit.tokenization import Tokenizer
from bertkit.training.trainer import checkpoint_dirs, epoch_order, train


@pytest.fixture(scope="module")
def sst2_small(tmp_path_factory, shared_dir: Path) -> Path:
    """The first 320 rows of the real SST-2 training file, in the GLUE layout."""
    directory = tmp_path_factory.mktemp("sst2")
    lines = (shared_dir / "data" / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (directory / "train.tsv").write_text("\n".join(lines[:321]) + "\n", encoding="utf-8")
    (directory / "dev.tsv").write_text("\n".join([lines[0]] + lines[321:421]) + "\n", encoding="utf-8")
    return directory


def finetune_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--task", "sst2", "--model", str(model), "--data-dir", str(data),
            "--output-dir", str(out), "--batch-size", "16", "--lr", "1e-3", "--device", "cpu",
            "--seed", "7", "--no-progress", "--log-every", "1", *extra]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def stopped_after_four_steps(model_dir: Path, data: Path, out: Path):
    """(task, features, config) of a 12-step run with finetune_args' lr and seed, stopped (as if
    killed) after its step-4 checkpoint."""
    task = get_task_class("sst2")(TaskOptions(data_dir=str(data)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(model_dir), 128)
    config = TrainConfig(output_dir=str(out), max_steps=12, batch_size=16, lr=1e-3, seed=7, device="cpu",
                         eval_every="none", save_every=4, progress=False)
    train(task, BertForSequenceClassification.from_pretrained(model_dir), features, None, config,
          stop_after_steps=4)
    return task, features, config


def test_epoch_order_is_a_seeded_permutation_and_groups_lengths() -> None:
    lengths = [5, 50, 7, 40, 6, 45, 8, 44] * 25
    a = epoch_order(lengths, 200, seed=1, epoch=0, batch_size=4, group_by_length=False)
    assert sorted(a.tolist()) == list(range(200))
    assert (a == epoch_order(lengths, 200, 1, 0, 4, False)).all()
    assert not (a == epoch_order(lengths, 200, 1, 1, 4, False)).all()  # new epoch, new order
    grouped = epoch_order(lengths, 200, seed=1, epoch=0, batch_size=4, group_by_length=True)
    assert sorted(grouped.tolist()) == list(range(200))
    spread = [max(lengths[i] for i in grouped[k:k + 4]) - min(lengths[i] for i in grouped[k:k + 4])
              for k in range(0, 200, 4)]
    random_spread = [max(lengths[i] for i in a[k:k + 4]) - min(lengths[i] for i in a[k:k + 4])
                     for k in range(0, 200, 4)]
    assert sum(spread) < sum(random_spread) / 3  # batches of similar lengths: little padding


def test_run_directory_is_complete_and_loadable_by_transformers(tiny_model_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "6")) == 0
    for name in ("config.json", "model.safetensors", "vocab.txt", "bertkit.json", "metrics.json",
                 "log.jsonl", "curves.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "bertkit.json").read_text())
    assert info["task"] == "sst2" and info["labels"] == ["0", "1"] and info["train"]["lr"] == 1e-3
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0 and metrics["best_step"] in (6, 12)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(r["lr"] > 0 and r["samples_per_s"] > 0 for r in steps[:-1])
    assert [r["step"] for r in log if "eval" in r] == [6, 12]
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2


def test_same_seed_same_run_and_resume_is_bit_identical(tiny_model_dir, sst2_small, tmp_path) -> None:
    straight = tmp_path / "straight"
    assert main(finetune_args(tiny_model_dir, sst2_small, straight, "--max-steps", "16",
                              "--eval-every", "none", "--save-every", "4")) == 0
    # Interrupted at step 8 (the trainer's stop hook behaves like a kill after a checkpoint) ...
    resumed = tmp_path / "resumed"
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    tok = Tokenizer.from_pretrained(tiny_model_dir)
    features = task.encode(task.read("train"), tok, 128)
    config = TrainConfig(output_dir=str(resumed), max_steps=16, batch_size=16, lr=1e-3, device="cpu",
                         seed=7, eval_every="none", save_every=4, progress=False, log_every=1)
    torch.manual_seed(7)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    train(task, model, features, None, config, stop_after_steps=8)
    assert [p.name for p in checkpoint_dirs(resumed)] == ["step-4", "step-8"]
    # ... then resumed from a fresh process state through the CLI.
    assert main(finetune_args(tiny_model_dir, sst2_small, resumed, "--max-steps", "16",
                              "--eval-every", "none", "--save-every", "4", "--resume")) == 0
    assert_identical(weights(straight), weights(resumed))
    # A second straight run with the same seed is identical too (the seed fully determines a run).
    again = tmp_path / "again"
    assert main(finetune_args(tiny_model_dir, sst2_small, again, "--max-steps", "16", "--eval-every", "none")) == 0
    assert_identical(weights(straight), weights(again))


def test_resume_after_sigkill_is_bit_identical(tiny_model_dir, sst2_small, tmp_path) -> None:
    straight = tmp_path / "straight"
    common = ["--max-steps", "40", "--eval-every", "none", "--save-every", "5", "--keep-checkpoints", "2"]
    assert main(finetune_args(tiny_model_dir, sst2_small, straight, *common)) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bertkit", *finetune_args(tiny_model_dir, sst2_small, killed, *common)]
    # Same intra-op thread count as this process: float reductions then run in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and not any(int(p.name.split("-")[1]) >= 10 for p in checkpoint_dirs(killed)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    found = checkpoint_dirs(killed)
    assert found, "no checkpoint was written before the kill"
    last = int(found[-1].name.split("-")[1])
    assert last < 40, "the run finished before it could be killed; the test proves nothing"
    assert len(found) <= 2  # --keep-checkpoints
    assert main(finetune_args(tiny_model_dir, sst2_small, killed, *common, "--resume")) == 0
    assert_identical(weights(straight), weights(killed))
    log = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 41))


def test_resume_on_a_finished_run_without_checkpoints_keeps_it(tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "3", "--eval-every", "none")) == 0
    shutil.rmtree(out / "checkpoints")  # as a run from before checkpoints were kept by default
    finished = weights(out)
    capsys.readouterr()
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "6", "--eval-every", "none",
                              "--resume")) == 1
    assert "holds a finished run (bertkit.json) and no checkpoint" in capsys.readouterr().err
    assert_identical(finished, weights(out))
    assert (out / "bertkit.json").is_file()
    # Without --resume it is refused too (it replaced the model after a note); --overwrite-output-dir replaces it.
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "none")) == 1
    assert "holds a finished run (bertkit.json); pick a new --output-dir" in capsys.readouterr().err
    assert_identical(finished, weights(out))
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "none",
                              "--overwrite-output-dir")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_steps_redone_after_resume_are_logged_once(tiny_model_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    config = TrainConfig(output_dir=str(out), max_steps=12, batch_size=16, lr=1e-3, seed=7, device="cpu",
                         eval_every="none", save_every=4, progress=False, log_every=1)  # finetune_args' values
    # Killed at step 10: checkpoints at 4 and 8, steps 9 and 10 logged but lost.
    train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None, config,
          stop_after_steps=10)
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "none",
                              "--save-every", "4", "--resume")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))


def test_a_fresh_run_never_mixes_with_an_earlier_runs_checkpoints(tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """An earlier run left step-8 and step-12. A fresh 3-step run there would keep those (pruning
    is by step number) and a later --resume would load step-12: the old model, silently. So a
    fresh run is refused unless --overwrite-output-dir, and --resume past --max-steps is refused."""
    out = tmp_path / "run"
    common = ["--eval-every", "none", "--save-every", "4"]
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", *common)) == 0
    assert [p.name for p in checkpoint_dirs(out)] == ["step-8", "step-12"]
    old_model = weights(out)
    capsys.readouterr()
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "3", *common)) == 1
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run (step-8, step-12)" in err and "--overwrite-output-dir" in err
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "3", *common, "--resume")) == 1
    assert "is at step 12, past the 3 steps this run trains for" in capsys.readouterr().err
    assert [p.name for p in checkpoint_dirs(out)] == ["step-8", "step-12"]  # nothing was touched
    assert_identical(old_model, weights(out))
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "3", *common, "--save-every", "1",
                              "--overwrite-output-dir")) == 0
    assert [p.name for p in checkpoint_dirs(out)] == ["step-2", "step-3"]
    fresh = tmp_path / "fresh"
    assert main(finetune_args(tiny_model_dir, sst2_small, fresh, "--max-steps", "3", *common)) == 0
    assert_identical(weights(fresh), weights(out))
    metrics = json.loads((fresh / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "dev" not in metrics  # --eval-every none: no evaluation, no null entry


def test_half_written_checkpoint_is_ignored_by_resume(tiny_model_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "4", "--eval-every", "none",
                              "--save-every", "2")) == 0
    # What a crash during a save leaves behind: a .tmp directory, and a directory without its state.
    (out / "checkpoints" / "step-6.tmp").mkdir()
    (out / "checkpoints" / "step-8").mkdir()
    assert [p.name for p in checkpoint_dirs(out)] == ["step-2", "step-4"]


def test_resume_on_other_data_is_refused(tiny_model_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "none",
                              "--save-every", "2")) == 0
    other = tmp_path / "other"
    other.mkdir()
    lines = (sst2_small / "train.tsv").read_text().splitlines()
    (other / "train.tsv").write_text("\n".join([lines[0]] + lines[50:]) + "\n")
    (other / "dev.tsv").write_text((sst2_small / "dev.tsv").read_text())
    with pytest.raises(ValueError, match="other training data"):
        task = get_task_class("sst2")(TaskOptions(data_dir=str(other)))
        features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
        model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
        train(task, model, features, None, TrainConfig(output_dir=str(out), max_steps=4, batch_size=16,
                                                       device="cpu", resume=True, progress=False))


def test_gradient_accumulation_matches_a_larger_batch(tiny_model_dir, sst2_small, tmp_path) -> None:
    """2 micro-batches of 8 accumulate to the gradient of one batch of 16 (dropout off)."""
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    results = []
    for batch, accum in ((16, 1), (8, 2)):
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config = TrainConfig(output_dir=str(tmp_path / f"b{batch}"), max_steps=3, batch_size=batch, grad_accum=accum,
                             lr=1e-3, device="cpu", eval_every="none", progress=False, max_grad_norm=0)
        results.append(train(task, model, features, None, config).model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], atol=2e-5, rtol=1e-4)


def test_gradient_accumulation_matches_a_larger_batch_over_an_epoch_with_a_short_tail(
        tiny_model_dir, sst2_small, tmp_path) -> None:
    """203 examples: 12 full steps of 16 and a last one of 11. Split into micro-batches of 8 or 4,
    the last step must still be the mean over its 11 examples (it weighted a short micro-batch like
    a full one, a gradient norm 30% off), and no example may be dropped (with 4 x 4 the tail of 11
    was cut, 12 steps instead of 13)."""
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)[:203]
    results, steps = [], []
    for batch, accum in ((16, 1), (8, 2), (4, 4)):
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config = TrainConfig(output_dir=str(tmp_path / f"b{batch}"), epochs=1, batch_size=batch, grad_accum=accum,
                             lr=1e-3, device="cpu", eval_every="none", progress=False, max_grad_norm=0, log_every=1)
        result = train(task, model, features, None, config)
        results.append(result.model.state_dict())
        log = [json.loads(line) for line in (tmp_path / f"b{batch}" / "log.jsonl").read_text().splitlines()]
        steps.append([(r["step"], round(r["grad_norm"], 4)) for r in log if "loss" in r])
    assert [len(s) for s in steps] == [13, 13, 13]
    assert steps[0] == steps[1] == steps[2]
    for other in results[1:]:
        for key in results[0]:
            torch.testing.assert_close(results[0][key], other[key], atol=2e-5, rtol=1e-4)


def trained_alike_however_split(task, build_model, features, tmp_path: Path, steps: int = 3):
    """Final weights and logged per-step losses of `steps` optimizer steps of 16 examples, taken as
    1 x 16, 2 x 8 and 4 x 4 (micro-batch x --grad-accum), dropout off, same seed and order."""
    runs = []
    for batch, accum in ((16, 1), (8, 2), (4, 4)):
        torch.manual_seed(0)
        model = build_model()
        config = TrainConfig(output_dir=str(tmp_path / f"b{batch}"), max_steps=steps, batch_size=batch,
                             grad_accum=accum, lr=1e-3, device="cpu", eval_every="none", progress=False,
                             max_grad_norm=0, log_every=1, seed=5)
        state = train(task, model, features, None, config).model.state_dict()
        log = [json.loads(line) for line in (tmp_path / f"b{batch}" / "log.jsonl").read_text().splitlines()]
        runs.append((state, [r["loss"] for r in log if "loss" in r]))
    return runs


def assert_same_training(runs) -> None:
    (reference, reference_losses), *others = runs
    for state, losses in others:
        assert losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
        for key in reference:
            torch.testing.assert_close(state[key], reference[key], atol=2e-5, rtol=1e-4)


def test_token_averaged_ner_loss_is_the_same_however_the_step_is_split(shared_dir, tmp_path) -> None:
    """NER's loss is a mean over labelled tokens, and CoNLL sentences have 1 to 100+ of them: each
    micro-batch averaging over its own tokens (weighted by its share of sentences) gave a different
    gradient for every split of the same 16 sentences. The step now divides by all its tokens."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForTokenClassification

    task = get_task_class("conll2003")(TaskOptions(data_dir=str(shared_dir / "data" / "conll2003")))
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-uncased" / "vocab.txt", do_lower_case=True)
    features = task.encode(task.read("train")[:48], tokenizer, 128)
    counts = [sum(int(label >= 0) for label in f["labels"]) for f in features[:16]]
    assert max(counts) > 3 * min(counts)  # sentences of very different token counts in one step

    def build():
        return BertForTokenClassification(preset("tiny", vocab_size=30522, hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0, **task.model_config_updates()))

    assert_same_training(trained_alike_however_split(task, build, features, tmp_path))


def test_class_weighted_polyphone_loss_is_the_same_however_the_step_is_split(shared_dir, tmp_path) -> None:
    """--class-weights balanced: the loss is the class-weighted mean, sum(w_y * CE) / sum(w_y), whose
    denominator depends on which readings the step holds; it is now taken over the whole step."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForPolyphone

    task = get_task_class("polyphone")(TaskOptions(data_dir=str(shared_dir / "data" / "polyphone" / "g2pL"),
                                                   extra={"class_weights": "balanced"}))
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-chinese")
    features = task.encode(task.read("train")[:48], tokenizer, 64)
    weights = task.class_weights()
    assert len({round(float(weights[f["labels"]]), 3) for f in features[:16]}) > 1  # unequal weights in a step

    def build():
        return BertForPolyphone(preset("tiny", vocab_size=tokenizer.vocab_size, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0, **task.model_config_updates()))

    assert_same_training(trained_alike_however_split(task, build, features, tmp_path))


def test_polyphone_dev_loss_leaves_unpredictable_rows_out_at_any_batch_size(shared_dir) -> None:
    """Rows whose character the model has no readings for carry no label (-100): the dev loss is the
    mean over the labelled rows, the same in batches of 40, 10 or 5 (a mean per batch times its rows
    counted the unlabelled rows, 0.76 instead of 1.01 here)."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForPolyphone
    from bertkit.training.trainer import evaluate

    task = get_task_class("polyphone")(TaskOptions(data_dir=str(shared_dir / "data" / "polyphone" / "g2pL")))
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-chinese")
    examples = task.read("dev")[:40]
    features = task.encode(examples, tokenizer, 64)
    shortest = sorted(range(40), key=lambda i: len(features[i]["input_ids"]))[:10]
    features = [{**f, "labels": -100} if i in shortest else f for i, f in enumerate(features)]
    torch.manual_seed(0)
    model = BertForPolyphone(preset("tiny", vocab_size=tokenizer.vocab_size, **task.model_config_updates())).eval()
    losses = [evaluate(task, model, examples, features, size, torch.device("cpu"))[0]["loss"] for size in (40, 10, 5)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-6)


def test_ner_dev_loss_is_the_mean_over_all_labelled_tokens(shared_dir) -> None:
    """Evaluation in batches of 7 sentences reports the loss one batch of all 50 gives: the summed
    token losses over the labelled-token count of the whole split, not a mean of batch means."""
    from bertkit.config import preset
    from bertkit.modeling.heads import BertForTokenClassification
    from bertkit.training.trainer import evaluate

    task = get_task_class("conll2003")(TaskOptions(data_dir=str(shared_dir / "data" / "conll2003")))
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / "bert-base-uncased" / "vocab.txt", do_lower_case=True)
    examples = task.read("dev")[:50]
    features = task.encode(examples, tokenizer, 128)
    torch.manual_seed(0)
    model = BertForTokenClassification(preset("tiny", vocab_size=30522, **task.model_config_updates())).eval()
    metrics, _ = evaluate(task, model, examples, features, 7, torch.device("cpu"))
    with torch.no_grad():
        whole = model(**task.collate(features)).loss.item()
        batch_means = [model(**task.collate(features[i:i + 7])).loss.item() for i in range(0, 50, 7)]
    assert metrics["loss"] == pytest.approx(whole, rel=1e-6)
    assert abs(sum(batch_means) / len(batch_means) - whole) > 1e-3  # the mean of means would differ


def test_mlm_and_nsp_losses_are_the_same_however_the_step_is_split(shared_dir, tmp_path) -> None:
    """Pre-training on static records (the masks are in the records, so every split sees the same
    ones): the MLM loss is averaged over all masked tokens of the step, the NSP loss over its pairs."""
    from bertkit.config import preset
    from bertkit.data.records import open_pretraining_data
    from bertkit.modeling.heads import BertForPreTraining
    from bertkit.training.pretraining import PretrainingTask

    vocab = shared_dir / "models" / "bert-base-uncased" / "vocab.txt"
    records = tmp_path / "records"
    assert main(["pretrain-data", "--input", str(shared_dir / "data" / "bert_sample_text" / "sample_text.txt"),
                 "--tokenizer", str(vocab), "--output-dir", str(records), "--max-seq-length", "64",
                 "--masked-lm-prob", "0.15", "--seed", "3"]) == 0
    data = open_pretraining_data(records)
    task = PretrainingTask(data, Tokenizer.from_pretrained(vocab, do_lower_case=True))
    assert task.masking == "static" and task.nsp
    features = task.training_view(data)
    masked = [int((features[i]["masked_positions"] >= 0).sum()) for i in range(16)]
    assert len(set(masked)) > 1  # rows with different numbers of masked tokens

    def build():
        return BertForPreTraining(preset("tiny", vocab_size=30522, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0))

    assert_same_training(trained_alike_however_split(task, build, features, tmp_path))


def test_best_metric_loss_keeps_the_model_with_the_lowest_dev_loss(tiny_model_dir, sst2_small, tmp_path,
                                                                   capsys) -> None:
    """Every evaluation reports `loss` (the training objective on dev: the mean cross entropy over its
    examples); --best-metric loss keeps the model where it is lowest, records it as the run's main
    metric, and a name the evaluation lacks is an error that lists the ones it has."""
    out = tmp_path / "by-loss"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "8", "--eval-every", "2",
                              "--best-metric", "loss", "--keep-checkpoints", "4", "--eval-batch-size", "32")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    losses = {h["step"]: h["eval"]["loss"] for h in metrics["history"]}
    assert sorted(losses) == [2, 4, 6, 8] and len(set(losses.values())) == 4
    best = min(losses, key=losses.get)
    assert metrics["best_step"] == best and metrics["dev"]["loss"] == losses[best]
    assert json.loads((out / "bertkit.json").read_text())["main_metric"] == "loss"
    assert_identical(weights(out), torch.load(out / "checkpoints" / f"step-{best}" / "model.pt", weights_only=True))

    # The reported loss is the mean over all dev examples, not a mean of batch means (100 examples
    # in eval batches of 32 leave a last batch of 4).
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    dev = task.read("dev")
    features = task.encode(dev, Tokenizer.from_pretrained(out), 128)
    model = BertForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        whole = model(**task.collate(features)).loss.item()
    assert metrics["dev"]["loss"] == pytest.approx(whole, rel=1e-5)

    capsys.readouterr()
    typo = tmp_path / "typo"
    assert main(finetune_args(tiny_model_dir, sst2_small, typo, "--max-steps", "4", "--eval-every", "2",
                              "--best-metric", "acuracy")) == 1
    assert ("--best-metric acuracy: the evaluations of this run report accuracy, loss (did you mean accuracy?)"
            in capsys.readouterr().err)
    assert not typo.exists()  # refused before training, before anything was written
    with pytest.raises(ValueError, match="--best-metric loss picks the best of the evaluations"):
        TrainConfig(best_metric="loss", eval_every="none")


# (task, data files under shared/data, tokenizer under shared/models)
EVALUATED_TASKS = [
    ("sst2", {"data_dir": "glue/SST-2"}, "bert-base-uncased"),
    ("stsb", {"data_dir": "glue/STS-B"}, "bert-base-uncased"),
    ("cola", {"data_dir": "glue/CoLA"}, "bert-base-uncased"),
    ("mrpc", {"data_dir": "glue/MRPC"}, "bert-base-uncased"),
    ("conll2003", {"data_dir": "conll2003"}, "bert-base-cased"),
    ("squad", {"dev_file": "squad_v1.1/dev-v1.1.json"}, "bert-base-uncased"),
    ("squad", {"dev_file": "squad_v2.0/dev-v2.0.json"}, "bert-base-uncased"),
    ("atsc", {"data_dir": "semeval2014_absa"}, "bert-base-uncased"),
    ("polyphone", {"data_dir": "polyphone/g2pL"}, "bert-base-chinese"),
]


@pytest.mark.parametrize("name, files, vocab", EVALUATED_TASKS, ids=[f"{t}-{next(iter(f.values()))}"
                                                                     for t, f, _ in EVALUATED_TASKS])
def test_placeholder_predictions_name_the_metrics_an_evaluation_reports(shared_dir, name, files, vocab) -> None:
    """--best-metric is checked before training against metrics() of placeholder predictions; those
    names are the ones an evaluation of a model reports (besides its loss), task by task on real dev
    data (SQuAD v2's HasAns/NoAns and best-threshold numbers included)."""
    from bertkit.config import preset
    from bertkit.training.trainer import evaluate

    task = get_task_class(name)(TaskOptions(**{k: str(shared_dir / "data" / v) for k, v in files.items()},
                                            max_seq_length=64, extra={"doc_stride": 32} if name == "squad" else {}))
    if "data_dir" in files:
        task.read("train")  # the label set, where the training data decides it
    dev = task.read("dev")
    dev = dev[:24] + dev[-24:]
    tokenizer = Tokenizer.from_pretrained(shared_dir / "models" / vocab)
    torch.manual_seed(0)
    model = task.build_model(preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    metrics, _ = evaluate(task, model, dev, task.encode(dev, tokenizer, 64), 16, torch.device("cpu"))
    placeholder = task.metrics(dev, task.placeholder_predictions(dev))
    assert set(metrics) - {"loss"} == set(placeholder) and len(placeholder) >= 1


def test_resume_refuses_another_best_metric(tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """The best model so far was judged by the run's metric: a resume may not switch it, also from a
    checkpoint written before --best-metric existed. Naming the task's own main metric is no switch."""
    from bertkit.training.trainer import STATE_FILE

    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "2",
                              "--best-metric", "accuracy")) == 0
    assert json.loads((out / "bertkit.json").read_text())["train"]["best_metric"] == ""
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "4", "--eval-every", "2",
                              "--best-metric", "loss", "--resume")) == 1
    assert "best_metric '' (now 'loss')" in capsys.readouterr().err
    state_path = out / "checkpoints" / "step-2" / STATE_FILE
    state = json.loads(state_path.read_text())
    del state["settings"]["best_metric"]  # as a checkpoint of an earlier version holds it
    state_path.write_text(json.dumps(state))
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "4", "--eval-every", "2",
                              "--best-metric", "loss", "--resume")) == 1
    assert "best_metric '' (now 'loss')" in capsys.readouterr().err
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "4", "--eval-every", "2",
                              "--resume")) == 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu(tiny_model_dir, sst2_small, tmp_path, precision) -> None:
    out = tmp_path / precision
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "6", "--eval-every", "none",
                              "--precision", precision)) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 6 and all(l == l for l in losses)  # finite, no NaN


def test_bf16_residual_stream_trains_like_fp32(tiny_model_dir, sst2_small, tmp_path) -> None:
    # Same seed, same batches, same dropout: the runs differ only in the rounding of the hidden
    # states between sublayers.
    losses = {}
    for residual in ("fp32", "bf16"):
        out = tmp_path / residual
        assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "16", "--eval-every", "none",
                                  "--precision", "bf16", "--residual-dtype", residual)) == 0
        assert json.loads((out / "bertkit.json").read_text())["train"]["residual_dtype"] == residual
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        losses[residual] = [r["loss"] for r in log if "loss" in r]
    fp32, bf16 = losses["fp32"], losses["bf16"]
    assert len(fp32) == len(bf16) == 16
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.01, (fp32, bf16)  # measured: 3e-4
    with pytest.raises(ValueError, match="--residual-dtype bf16 needs --precision bf16"):
        TrainConfig(residual_dtype="bf16", precision="fp32")


def test_non_finite_loss_is_skipped_and_counted(tiny_model_dir, sst2_small, tmp_path) -> None:
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original_forward = model.forward

    def poisoned(*args, **kwargs):  # every loss is NaN: no step may change the weights
        out = original_forward(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    model.forward = poisoned
    config = TrainConfig(output_dir=str(tmp_path / "nan"), max_steps=3, batch_size=16, device="cpu",
                         eval_every="none", progress=False, weight_decay=0.0)
    result = train(task, model, features, None, config)
    assert result.state.skipped_steps == 3
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_resume_with_a_global_batch_that_does_not_divide_the_position_is_refused(
        tiny_model_dir, sst2_small, tmp_path) -> None:
    """Saved after 4 steps of 16 (64 examples): batch 32 divides that and resumes; 24 does not and
    would skip examples silently, so it is refused with the numbers and the fix."""
    out = tmp_path / "run"
    args = ["--eval-every", "none", "--save-every", "4", "--keep-checkpoints", "1"]
    task, features, config = stopped_after_four_steps(tiny_model_dir, sst2_small, out)
    code = main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", *args, "--resume",
                              "--batch-size", "24"))
    assert code == 1
    with pytest.raises(ValueError, match=r"stopped 64 examples into epoch 0, which is not a whole number "
                                         r"of global batches of 24"):
        train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None,
              TrainConfig(**{**config.to_dict(), "batch_size": 24, "resume": True}))
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "6", *args, "--resume",
                              "--batch-size", "32")) == 0


def test_loader_workers_default_to_processes_on_cuda_only() -> None:
    from bertkit.config import TrainConfig
    from bertkit.training.trainer import loader_workers

    assert loader_workers(TrainConfig(), torch.device("cpu")) == 0
    assert 1 <= loader_workers(TrainConfig(), torch.device("cuda")) <= 4
    assert loader_workers(TrainConfig(num_workers=2), torch.device("cpu")) == 2
    assert loader_workers(TrainConfig(num_workers=0), torch.device("cuda")) == 0


def test_attention_flags_reach_the_model_and_its_saved_config(tiny_model_dir, sst2_small, tmp_path) -> None:
    from bertkit.cli import build_parser
    from bertkit.commands.common import train_config_from_args

    argv = ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"),
            "--attn-backend", "sdpa_unpadded", "--attention-dropout", "0"]
    args = build_parser(argv)[0].parse_args(argv)
    config = train_config_from_args(args)
    assert (config.attn_backend, config.attention_dropout) == ("sdpa_unpadded", 0.0)
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    config = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=8, device="cpu",
                         eval_every="none", progress=False, attn_backend="sdpa_unpadded", attention_dropout=0.0)
    result = train(task, model, features, None, config)
    assert result.model.attn_backend == "sdpa_unpadded"
    assert all(layer.attention.self.dropout_p == 0.0 for layer in result.model.bert.encoder.layer)
    assert result.model.config.attention_probs_dropout_prob == 0.0
    with pytest.raises(ValueError, match="--attn-backend 'fast'"):
        TrainConfig(attn_backend="fast")


def test_finished_run_resumed_again_keeps_its_best_model(tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """A requeued job that reruns a finished command with --resume changes nothing: the run
    directory keeps the best model (it got the last step's, with metrics.json naming the best step
    but showing the last one's score), and log.jsonl ends once."""
    out = tmp_path / "run"
    args = ("--max-steps", "12", "--eval-every", "4", "--keep-checkpoints", "5")
    assert main(finetune_args(tiny_model_dir, sst2_small, out, *args)) == 0
    assert [p.name for p in checkpoint_dirs(out)] == ["step-4", "step-8", "step-12"]  # at evals and the end
    assert main(["evaluate", "--model", str(out), "--data-dir", str(sst2_small), "--split", "train",
                 "--device", "cpu"]) == 0
    best, metrics = weights(out), json.loads((out / "metrics.json").read_text())
    assert metrics["best_step"] != 12, "the last step is the best: the test proves nothing"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, *args, "--resume")) == 0
    assert json.loads((out / "metrics.json").read_text())["train"] == metrics["train"]  # evaluate's entry stays
    assert_identical(best, weights(out))
    again = json.loads((out / "metrics.json").read_text())
    assert (again["best_step"], again["dev"]) == (metrics["best_step"], metrics["dev"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in log].count("end") == 1
    assert [p.name for p in checkpoint_dirs(out)] == ["step-4", "step-8", "step-12"]  # not rewritten


def test_training_longer_takes_the_new_schedule_from_the_next_step(tiny_model_dir, sst2_small, tmp_path) -> None:
    """--resume with a higher --max-steps trains on from the final checkpoint; the next step's rate
    is the new schedule's (the restored optimizer held the old one's last rate, 0)."""
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "6", "--eval-every", "none")) == 0
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "none",
                              "--resume")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["lr"] for r in log if "loss" in r}
    assert sorted(rates) == list(range(1, 13))
    assert rates[1] == pytest.approx(1e-3) and rates[6] == pytest.approx(1e-3 / 6)  # the first run: 6 steps
    assert rates[7] == pytest.approx(1e-3 * 6 / 12) and rates[12] == pytest.approx(1e-3 / 12)


def test_resume_refuses_a_changed_seed_or_learning_rate(tiny_model_dir, sst2_small, tmp_path) -> None:
    """They were silently ignored (the lr lives in the restored optimizer) or re-visited examples
    (another seed orders the rest of the epoch differently), while bertkit.json recorded them."""
    out = tmp_path / "run"
    task, features, config = stopped_after_four_steps(tiny_model_dir, sst2_small, out)
    for change, message in (({"lr": 2e-3}, r"lr 0.001 \(now 0.002\)"), ({"seed": 8}, r"seed 7 \(now 8\)")):
        with pytest.raises(ValueError, match=r"--resume: .*step-4 was trained with " + message):
            train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None,
                  TrainConfig(**{**config.to_dict(), **change, "resume": True}))
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "none",
                              "--save-every", "4", "--resume", "--lr", "5e-4")) == 1


def test_logged_rate_is_the_one_each_step_used(tiny_model_dir, sst2_small, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "4", "--eval-every", "none",
                              "--warmup-steps", "2")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # It logged the rate after each step's scheduler move: [1e-3, 1e-3, 5e-4, 0.0].
    assert [r["lr"] for r in log if "loss" in r] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])


@pytest.mark.parametrize("field,value,message", [
    ("log_every", 0, "--log-every must be >= 1"), ("save_every", -1, "--save-every must be >= 0"),
    ("warmup_steps", -5, "--warmup-steps must be >= 0"), ("weight_decay", -1.0, "--weight-decay must be >= 0"),
    ("max_grad_norm", float("nan"), "--max-grad-norm must be >= 0"), ("adam_beta2", 1.0, r"--adam-beta2 must be in"),
    ("num_workers", -2, r"--num-workers must be >= 0, or -1 for the default")])
def test_bad_numeric_flags_are_refused(field, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_a_full_disk_during_a_checkpoint_says_so_and_keeps_the_last_one(
        tiny_model_dir, sst2_small, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    config = TrainConfig(output_dir=str(out), max_steps=8, batch_size=16, lr=1e-3, device="cpu",
                         eval_every="none", save_every=4, progress=False)
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the second checkpoint's model.pt
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*step-8 .*GiB free on that disk.*--resume"):
        train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None, config)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-4"]  # no step-8.tmp left behind


def test_resumed_run_logs_the_same_loss_averages(tiny_model_dir, sst2_small, tmp_path) -> None:
    """Log lines average the loss since the previous line; a resume between two lines restarted the
    sum, so the first line after it averaged fewer steps (6.74 against 8.47 in the audit)."""
    task = get_task_class("sst2")(TaskOptions(data_dir=str(sst2_small)))
    features = task.encode(task.read("train"), Tokenizer.from_pretrained(tiny_model_dir), 128)
    logs = []
    for name, stop in (("straight", None), ("resumed", 6)):
        config = TrainConfig(output_dir=str(tmp_path / name), max_steps=12, batch_size=16, lr=1e-3, seed=7,
                             device="cpu", eval_every="none", save_every=3, log_every=5, progress=False)
        train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None, config,
              stop_after_steps=stop)
        if stop:
            train(task, BertForSequenceClassification.from_pretrained(tiny_model_dir), features, None,
                  TrainConfig(**{**config.to_dict(), "resume": True}))
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        logs.append([(r["step"], r["loss"]) for r in records if "loss" in r])
    assert [step for step, _ in logs[0]] == [5, 10, 12]
    assert logs[0] == logs[1]


def test_an_output_dir_that_is_not_a_run_is_refused_before_anything_is_written(
        tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """A data directory given as --output-dir (with or without --resume) had the run's config.json,
    weights and tokenizer files written among its files; a file there failed with a traceback
    after the data was read."""
    data = tmp_path / "data"
    shutil.copytree(sst2_small, data)
    before = sorted(p.name for p in data.iterdir())
    for extra in ((), ("--resume",)):
        assert main(finetune_args(tiny_model_dir, data, data, "--max-steps", "1", *extra)) == 1
        err = capsys.readouterr().err
        assert f"--output-dir {data} is not empty and holds no bertkit run (it holds dev.tsv, train.tsv)" in err
        assert sorted(p.name for p in data.iterdir()) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    assert main(finetune_args(tiny_model_dir, sst2_small, a_file, "--max-steps", "1")) == 1
    err = capsys.readouterr().err
    assert f"--output-dir {a_file} is a file, not a directory" in err and "Traceback" not in err
    assert a_file.read_text() == "mine\n"


def test_a_tokenizer_or_length_the_model_cannot_take_is_refused_up_front(tiny_model_dir, sst2_small, tmp_path,
                                                                         capsys) -> None:
    """A tokenizer with more tokens than the model's word embeddings, or --max-seq-length past its
    position embeddings, failed at the first batch that reached them (IndexError deep in the
    embedding on CPU), after the run directory was started, or never on short data."""
    from bertkit.config import preset

    small = tmp_path / "small-vocab"
    BertForSequenceClassification(preset("tiny", vocab_size=1000)).save_pretrained(
        small, tokenizer=Tokenizer.from_pretrained(tiny_model_dir))
    (small / "vocab.txt").unlink()  # tokenizer.json only: the vocab.txt line count check does not see it
    out = tmp_path / "run"
    assert main(finetune_args(small, sst2_small, out, "--max-steps", "1")) == 1
    assert "tokenizer has 30522 tokens but the model has vocab_size=1000" in capsys.readouterr().err
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "1", "--max-seq-length", "600")) == 1
    assert ("--max-seq-length 600 is longer than the model's max_position_embeddings=512"
            in capsys.readouterr().err)
    assert not out.exists()


def test_an_os_error_is_reported_without_a_traceback(monkeypatch, capsys) -> None:
    """An unwritable path or a full disk (the trainer's OSError says which checkpoint and how much
    space is free) printed a Python traceback: the CLI caught only FileNotFoundError of the OSErrors."""
    import bertkit.commands.info

    def refuse(args):
        raise PermissionError(13, "Permission denied", "/runs/locked")

    monkeypatch.setattr(bertkit.commands.info, "run", refuse)
    assert main(["info", "anything"]) == 1
    assert capsys.readouterr().err == "bertkit info: error: [Errno 13] Permission denied: '/runs/locked'\n"


def test_a_checkpoint_is_a_model_directory_for_evaluate_predict_and_convert(
        tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """`--model RUN/checkpoints/step-N` said "no weights found" (a checkpoint held only model.pt and
    the training state), so an intermediate model could not be scored or exported. A checkpoint now
    also holds config.json, the tokenizer and bertkit.json: it evaluates to the score the run logged
    at that step, predicts, and converts to a directory transformers loads."""
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "6")) == 0
    logged = {r["step"]: r["eval"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if "eval" in r}
    step6 = out / "checkpoints" / "step-6"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(step6), "--data-dir", str(sst2_small), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == logged[6]["accuracy"]
    assert main(["predict", "--model", str(step6), "--data-dir", str(sst2_small), "--split", "dev",
                 "--output", str(tmp_path / "predictions.tsv"), "--device", "cpu"]) == 0
    assert len((tmp_path / "predictions.tsv").read_text().splitlines()) == 101  # header + 100 dev rows
    exported = tmp_path / "exported"
    assert main(["convert", str(step6), str(exported)]) == 0
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    ours = BertForSequenceClassification.from_pretrained(step6).eval()
    saved = torch.load(step6 / "model.pt", weights_only=True)
    assert all(torch.equal(tensor, saved[name]) for name, tensor in ours.state_dict().items())
    batch = Tokenizer.from_pretrained(step6)(["a gripping , funny film", "dull and lifeless"])
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-5)


def test_early_stopping_ends_the_run_and_a_resumed_run_stops_at_the_same_step(
        tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """--early-stopping-patience 2: the run ends after two evaluations without a better accuracy
    (a learning rate too small to change a prediction), keeps the best model, and logs why. The
    count comes from the evaluation history, so a run resumed in between stops at the same step,
    and a stopped run resumed again does not train on."""
    flags = ("--eval-every", "2", "--early-stopping-patience", "2", "--keep-checkpoints", "3")
    straight = tmp_path / "straight"
    args = finetune_args(tiny_model_dir, sst2_small, straight, "--max-steps", "20")
    args[args.index("--lr") + 1] = "1e-9"
    assert main([*args, *flags]) == 0
    assert "early stop at step 6: accuracy did not improve in the last 2 evaluations" in capsys.readouterr().err
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["best_step"] == 2
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval" in r] == [2, 4, 6]
    assert {"event": "early_stop", "step": 6, "best_step": 2, "patience": 2} in log
    best = torch.load(straight / "checkpoints" / "step-2" / "model.pt", weights_only=True)
    assert_identical(weights(straight), best)  # the run directory holds step 2's model, not step 6's

    resumed = tmp_path / "resumed"
    first = finetune_args(tiny_model_dir, sst2_small, resumed, "--max-steps", "4")
    first[first.index("--lr") + 1] = "1e-9"
    assert main([*first, *flags]) == 0  # evaluations at 2 and 4: one without improvement, patience left
    assert main([*args[:args.index("--output-dir") + 1], str(resumed), *args[args.index("--output-dir") + 2:],
                 *flags, "--resume"]) == 0
    assert json.loads((resumed / "metrics.json").read_text())["steps"] == 6
    before = (straight / "log.jsonl").read_text()
    assert main([*args, *flags, "--resume"]) == 0  # the stopped run, resumed: nothing more to train
    after = [json.loads(line) for line in (straight / "log.jsonl").read_text()[len(before):].splitlines()]
    assert not [r for r in after if "loss" in r or "eval" in r]
    assert json.loads((straight / "metrics.json").read_text())["steps"] == 6
    with pytest.raises(ValueError, match="--early-stopping-patience counts evaluations"):
        TrainConfig(early_stopping_patience=2, eval_every="none")
    with pytest.raises(ValueError, match="--eval-every end evaluates once, at the end"):
        TrainConfig(early_stopping_patience=2, eval_every="end")
    with pytest.raises(ValueError, match="expected 'epoch', a positive step count, 'end' or 'none'"):
        TrainConfig(eval_every="last")
    with pytest.raises(ValueError, match="--keep-last keeps the last one"):
        TrainConfig(early_stopping_patience=2, keep_best=False)
    from bertkit.training.trainer import resume_conflicts, resume_settings

    saved = resume_settings(TrainConfig(), 1)
    assert resume_conflicts(saved, resume_settings(TrainConfig(keep_best=False), 1)) == ["keep_best True (now False)"]
    older = {k: v for k, v in saved.items() if k != "keep_best"}  # a checkpoint from before --keep-last
    assert resume_conflicts(older, resume_settings(TrainConfig(keep_best=False), 1)) == ["keep_best True (now False)"]


def test_a_classifier_trained_elsewhere_is_read_in_its_own_label_order(
        tiny_model_dir, sst2_small, tmp_path, capsys) -> None:
    """A model fine-tuned by another tool names its classes in config.json's id2label, in its own
    order (run_glue's MNLI: entailment, neutral, contradiction; bertkit's: contradiction,
    entailment, neutral). bertkit read the rows in its own order and silently swapped the classes.
    Here bertkit's own SST-2 run, saved as another tool would with the rows in the other order and
    no bertkit.json, scores and predicts as the run itself."""
    out = tmp_path / "run"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "12", "--eval-every", "none")) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data-dir", str(sst2_small), "--device", "cpu"]) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere, ignore=shutil.ignore_patterns("bertkit.json", "metrics.json", "checkpoints"))
    state = weights(elsewhere)
    for name in ("classifier.weight", "classifier.bias"):
        state[name] = state[name].flip(0)  # row 0 is now class "1"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(elsewhere / "model.safetensors"))
    config = json.loads((elsewhere / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "1", "1": "0"}, {"1": 0, "0": 1}
    (elsewhere / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", "--task", "sst2", "--model", str(elsewhere), "--data-dir", str(sst2_small),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "orders its classes 1, 0 (config.json id2label)" in captured.err
    assert json.loads(captured.out)["accuracy"] == accuracy
    assert accuracy != 0.5  # the two orders give different scores on this run


def test_bertadam_is_adam_without_bias_correction(tiny_model_dir, sst2_small, tmp_path) -> None:
    """--optimizer bertadam: m / (sqrt(v) + eps) + wd * w, no bias correction (google-research/bert's
    AdamWeightDecayOptimizer, BertAdam); its first update is 0.1 / sqrt(0.001) = 3.16x AdamW's."""
    import numpy as np

    from bertkit.training.optim import BertAdam, build_optimizer

    w0 = np.array([[0.5, -1.0], [2.0, 0.25]])
    grads = [np.array([[0.1, -0.2], [0.3, 0.05]]), np.array([[-0.4, 0.1], [0.2, 0.3]])]
    lr, wd, eps = 0.01, 0.1, 1e-6
    weight = torch.nn.Parameter(torch.tensor(w0))
    optimizer = BertAdam([weight], lr=lr, weight_decay=wd, eps=eps)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for g in grads:
        weight.grad = torch.tensor(g)
        optimizer.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (np.sqrt(v) + eps) + wd * w)
        assert np.allclose(weight.detach().numpy(), w, rtol=0, atol=1e-12)

    plain, corrected = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    bert_adam = BertAdam([plain], lr=1.0, weight_decay=0.0, eps=1e-12)
    adamw = torch.optim.AdamW([corrected], lr=1.0, weight_decay=0.0, eps=1e-12)
    plain.grad = corrected.grad = torch.tensor([1.0, -2.0, 0.5])
    bert_adam.step()
    adamw.step()
    assert torch.allclose(plain / corrected, torch.full((3,), 0.1 / 0.001 ** 0.5))

    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="bertadam"), torch.device("cpu")), BertAdam)
    out = tmp_path / "bertadam"
    assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "none",
                              "--optimizer", "bertadam")) == 0
    assert json.loads((out / "bertkit.json").read_text())["train"]["optimizer"] == "bertadam"


def test_clip_per_tensor_clips_each_gradient_apart(tiny_model_dir, sst2_small, tmp_path) -> None:
    """--clip-per-tensor: pytorch-pretrained-bert's BertAdam calls clip_grad_norm_(p, 1.0) for each
    parameter p; a tensor with a large gradient is scaled to norm 1, the small ones stay whole
    (a global clip would shrink them all)."""
    from bertkit.training.optim import clip_each_tensor

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((4, 3), (7,), (2, 2, 2))]
    grads = [torch.randn(4, 3) * 10, torch.randn(7) * 0.01, torch.randn(2, 2, 2) * 0.5]
    reference = [torch.nn.Parameter(torch.zeros_like(p)) for p in params]
    for p, r, g in zip(params, reference, grads):
        p.grad, r.grad = g.clone(), g.clone()
    total = clip_each_tensor(params, 1.0)
    for r in reference:
        torch.nn.utils.clip_grad_norm_(r, 1.0)  # what their optimizer does, one parameter at a time
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=0)
    assert float(params[0].grad.norm()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(params[1].grad, grads[1], rtol=0, atol=0)  # untouched: a global clip would shrink it
    assert float(total) == pytest.approx(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))

    runs = {}
    for name, extra in (("global", ()), ("per-tensor", ("--clip-per-tensor",))):
        out = tmp_path / name
        assert main(finetune_args(tiny_model_dir, sst2_small, out, "--max-steps", "2", "--eval-every", "none",
                                  "--optimizer", "bertadam", "--max-grad-norm", "0.05", *extra)) == 0
        runs[name] = BertForSequenceClassification.from_pretrained(out).state_dict()
    assert json.loads((tmp_path / "per-tensor" / "bertkit.json").read_text())["train"]["clip_per_tensor"] is True
    assert any(not torch.equal(runs["global"][k], runs["per-tensor"][k]) for k in runs["global"])
    with pytest.raises(ValueError, match="--clip-per-tensor with --fsdp"):
        TrainConfig(clip_per_tensor=True, fsdp=True)
