"""`bertkit pretrain`: from-scratch MLM+NSP on real WikiText-2 records learns, continued MLM
pre-training of MiniLM feeds `bertkit finetune` (the BERT-ADA flow), exact resume with dynamic
masking, Google TFRecord / NVIDIA HDF5 inputs, and the refusals that must come before training.

Runs on CPU with the tiny preset (2 layers, H=128) and short steps: the vocabulary projection
(30522 x 128 over the masked positions only) is most of each step."""

from __future__ import annotations

import functools
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bertkit.training.trainer as trainer
from bertkit.cli import main
from bertkit.config import TrainConfig, preset
from bertkit.data.records import open_pretraining_data
from bertkit.modeling.heads import BertForPreTraining
from bertkit.tokenization import Tokenizer
from bertkit.training.distributed import DistInfo
from bertkit.training.pretraining import PretrainingTask, split_held_out

SHARED = Path(__file__).resolve().parents[2] / "shared"
UNCASED = SHARED / "models" / "bert-base-uncased" / "vocab.txt"
CHINESE = SHARED / "models" / "bert-base-chinese" / "vocab.txt"
WIKI = SHARED / "data" / "wikitext-2" / "train.txt"
SAMPLE = SHARED / "data" / "bert_sample_text" / "sample_text.txt"
FORMATS = SHARED / "data" / "pretraining_formats"
TFRECORD = FORMATS / "google_create_pretraining_data_format.tfrecord"
HDF5 = FORMATS / "nvidia_hdf5_format.hdf5"
ABSA = SHARED / "data" / "semeval2014_absa" / "xml"


def need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"shared asset {path} is absent")


def pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--output-dir", str(out), "--device", "cpu",
            "--no-progress", "--seed", "3", *extra]


def tiny(*extra: str) -> list[str]:
    return ["--config", "tiny", "--tokenizer", str(UNCASED), *extra]


def evals(out: Path) -> list[dict]:
    return [r["eval"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval" in r]


def initial_mlm_loss(data_path: Path, eval_path: Path | None, eval_fraction: float, seed: int = 3) -> float:
    """Held-out MLM loss of the model `pretrain --config tiny --seed 3` starts from: the same
    seeded init, the same held-out records and masks as the command builds."""
    tokenizer = Tokenizer.from_pretrained(UNCASED)
    data = open_pretraining_data(data_path)
    held = open_pretraining_data(eval_path) if eval_path else split_held_out(data, eval_fraction, seed)[1]
    task = PretrainingTask(data, tokenizer)
    trainer.seed_everything(seed)
    model = BertForPreTraining(preset("tiny", vocab_size=tokenizer.vocab_size))
    examples, features = task.eval_set(held)
    metrics, _ = trainer.evaluate(task, model, examples, features, 64, torch.device("cpu"))
    return metrics["mlm_loss"]


@pytest.fixture(scope="module")
def wiki_records(tmp_path_factory) -> Path:
    """MLM+NSP records (dynamic masking, 64 tokens) from the articles in the first 1500 lines of
    WikiText-2 train."""
    need(WIKI, UNCASED)
    root = tmp_path_factory.mktemp("wiki")
    corpus = root / "wiki.txt"
    with WIKI.open(encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(1500)), encoding="utf-8")
    out = root / "records"
    assert main(["pretrain-data", "--input", str(corpus), "--tokenizer", str(UNCASED), "--output-dir", str(out),
                 "--wikitext", "--max-seq-length", "64", "--max-predictions-per-seq", "10",
                 "--masking", "dynamic"]) == 0
    return out


def test_from_scratch_tiny_on_wikitext_lowers_held_out_mlm_loss(wiki_records, tmp_path) -> None:
    out = tmp_path / "scratch"
    start = initial_mlm_loss(wiki_records, None, 0.05)
    # A random init predicts ~uniformly over the 30522 tokens.
    assert abs(start - math.log(30522)) < 0.3
    assert main(pretrain_args(wiki_records, out, *tiny(), "--max-steps", "50", "--batch-size", "16",
                              "--lr", "1e-3", "--warmup-steps", "8", "--eval-fraction", "0.05",
                              "--eval-every", "25", "--log-every", "25")) == 0
    history = evals(out)
    assert [round(h["records"]) for h in history] == [history[0]["records"]] * 2
    end = history[-1]["mlm_loss"]
    print(f"wikitext tiny: held-out MLM loss {start:.3f} -> {history[0]['mlm_loss']:.3f} (step 25) -> "
          f"{end:.3f} (step 50); MLM acc {history[-1]['mlm_accuracy']:.3f}, NSP acc {history[-1]['nsp_accuracy']:.3f}")
    assert start - end > 2.0
    assert history[-1]["mlm_accuracy"] > 0.03  # above the ~0 of a random init
    # The run directory is a HF checkpoint with both pre-training heads plus the tokenizer.
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"] and config["vocab_size"] == 30522
    assert {"cls.predictions.bias", "cls.seq_relationship.weight", "bert.pooler.dense.weight"} <= set(load_file(out / "model.safetensors"))
    assert (out / "vocab.txt").is_file() and json.loads((out / "bertkit.json").read_text())["nsp"] is True
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    ours = BertForPreTraining.from_pretrained(out).eval()
    ids = torch.tensor([[101, 1996, 103, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        diff = (hf(input_ids=ids).prediction_logits - ours(ids).mlm_logits).abs().max().item()
    assert diff < 1e-4


def test_errors_about_eval_data_name_eval_data(wiki_records, tmp_path, capsys) -> None:
    cased = tmp_path / "cased"
    assert main(["pretrain-data", "--input", str(SHARED / "data" / "bert_sample_text" / "sample_text.txt"),
                 "--tokenizer", str(SHARED / "models" / "bert-base-cased"), "--output-dir", str(cased)]) == 0
    capsys.readouterr()
    assert main(pretrain_args(wiki_records, tmp_path / "run", *tiny(), "--eval-data", str(cased),
                              "--max-steps", "1")) == 1
    assert f"error: --eval-data {cased}: the records were built with vocabulary" in capsys.readouterr().err
    assert main(pretrain_args(wiki_records, tmp_path / "run", *tiny(), "--eval-data", str(tmp_path / "none"),
                              "--max-steps", "1")) == 1
    assert f"error: --eval-data {tmp_path / 'none'}: no such file" in capsys.readouterr().err


def test_seed_script_do_eval_alone_is_refused_not_trained(wiki_records, tmp_path, capsys) -> None:
    """run_pretraining.py --do_eval alone scores a checkpoint; pretrain used to ignore the flag and train."""
    assert main(pretrain_args(wiki_records, tmp_path / "run", *tiny(), "--do_eval=True", "--max-steps", "1")) == 1
    assert "pretrain --do_eval without --do_train" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_google_run_pretraining_readme_command_runs(tmp_path, capsys) -> None:
    """google-research/bert's README command for run_pretraining.py, flag for flag, on the shared
    TFRecord in create_pretraining_data.py's format; MiniLM (same uncased vocabulary) stands in for
    $BERT_BASE_DIR, so its config.json is the --bert_config_file beside the checkpoint. One flag is
    added: --eval-fraction 0.25, since 1% of 28 records holds out none for --do_eval to score."""
    minilm, record = SHARED / "models" / "all-MiniLM-L6-v2", FORMATS / "google_create_pretraining_data_format.tfrecord"
    if not (minilm / "model.safetensors").is_file() or not record.is_file():
        pytest.skip("the shared MiniLM checkpoint or TFRecord fixture is absent")
    out = tmp_path / "pretraining_output"
    argv = ["pretrain", f"--input_file={record}", f"--output_dir={out}", "--do_train=True", "--do_eval=True",
            f"--bert_config_file={minilm}/config.json", f"--init_checkpoint={minilm}", "--train_batch_size=32",
            "--max_seq_length=128", "--max_predictions_per_seq=20", "--num_train_steps=4", "--num_warmup_steps=2",
            "--learning_rate=2e-5", "--eval-fraction=0.25", "--no-progress"]
    assert main(argv) == 0
    info = json.loads((out / "bertkit.json").read_text())
    assert (info["train"]["max_steps"], info["train"]["warmup_steps"], info["train"]["eval_every"]) == (4, 2, "end")
    assert info["base_model"] == str(minilm) and info["config"] is None
    assert [r["step"] for r in json.loads((out / "metrics.json").read_text())["history"]] == [4]
    capsys.readouterr()
    assert main([a.replace("=20", "=76") for a in argv] + ["--overwrite-output-dir"]) == 1
    assert "--max_predictions_per_seq 76: the records in --data" in capsys.readouterr().err
    assert main([a.replace("config.json", "tokenizer.json") if a.startswith("--bert_config_file") else a
                 for a in argv] + ["--overwrite-output-dir"]) == 1
    assert "bertkit reads the config.json beside the checkpoint" in capsys.readouterr().err


def test_nvidia_run_pretraining_readme_command_runs(tmp_path, capsys) -> None:
    """NVIDIA DeepLearningExamples' scripts/run_pretraining.sh command, flag for flag, shrunk to a tiny
    --config_file and 6 steps, on a directory of HDF5 shards in its format: only the files named
    *training* are read (as there; a *_test_* shard sits beside them), LAMB with the square-root
    polynomial decay over --max_steps, --steps_this_run 4 ends the run early, --train_batch_size is the
    optimizer step's examples split over --gradient_accumulation_steps, and --resume_from_checkpoint
    continues it. Their other checkpoint flags are refused with what to do instead."""
    need(HDF5, UNCASED)
    data = tmp_path / "hdf5_shards"
    data.mkdir()
    for name in ("wikicorpus_en_training_0.hdf5", "wikicorpus_en_test_0.hdf5"):
        (data / name).write_bytes(HDF5.read_bytes())
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 256, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                                  "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
                                  "type_vocab_size": 2, "initializer_range": 0.02, "vocab_size": 30522}))
    out = tmp_path / "checkpoints"
    argv = ["pretrain", f"--input_dir={data}", f"--output_dir={out}", f"--config_file={config}", "--do_train",
            "--bert_model=bert-large-uncased", "--train_batch_size=8", "--max_seq_length=128",
            "--max_predictions_per_seq=20", "--max_steps=6", "--warmup_proportion=0.2843",
            "--num_steps_per_checkpoint=2", "--learning_rate=6e-3", "--seed=42", "--fp16", "--checkpoint_activations",
            # the flags later versions of the script add
            f"--vocab_file={UNCASED}", f"--json-summary={tmp_path}/dllogger.json", "--gradient_accumulation_steps=2",
            "--allreduce_post_accumulation", "--allreduce_post_accumulation_fp16", "--log_freq=1",
            "--disable_progress_bar", "--no_cuda"]
    assert main([*argv, "--steps_this_run=4"]) == 0
    # the 28 of the training shard alone, all trained on: the script holds none out
    assert "28 training records, 0 held out" in capsys.readouterr().err
    info = json.loads((out / "bertkit.json").read_text())
    train = info["train"]
    assert info["data"] == str(data / "*training*") and info["config"] == str(config)
    assert (train["optimizer"], train["schedule"], train["max_steps"], train["stop_at_step"], train["warmup_ratio"],
            train["batch_size"], train["grad_accum"], train["save_every"], train["precision"], train["eval_every"]) == \
        ("lamb", "poly", 6, 4, 0.2843, 4, 2, 2, "fp16", "none")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if "lr" in r]
    # warmup over round(0.2843 * 6) = 2 steps, then 6e-3 * (1 - step/6)^0.5: the lr falls at the end of warmup
    assert lrs == pytest.approx([3e-3, 6e-3, 6e-3 * 0.5 ** 0.5, 6e-3 * (2 / 6) ** 0.5])
    assert [p.name for p in trainer.checkpoint_dirs(out)] == ["step-2", "step-4"]
    assert main([*argv, "--resume_from_checkpoint"]) == 0  # on to --max_steps
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    capsys.readouterr()
    # --init_checkpoint is read only with --resume_from_checkpoint, and then with the LAMB state (phase 2).
    assert main([*argv, f"--output_dir={tmp_path / 'x'}", "--init_checkpoint=ckpt_7038.pt"]) == 1
    assert "--init_checkpoint ckpt_7038.pt without --resume_from_checkpoint: run_pretraining.py does not read " \
           "it" in capsys.readouterr().err
    assert main([*argv, "--resume_from_checkpoint", "--phase2", "--phase1_end_step=7038"]) == 1
    assert "bertkit cannot read NVIDIA's optimizer state. Start from the weights alone: --model" in \
           capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_nvidia_pretraining_continues_from_an_nvidia_checkpoint(nvidia_checkpoint, tmp_path) -> None:
    """--model ckpt_N.pt (the weights of a run_pretraining.py checkpoint) with its --config_file and
    --vocab_file: phase 2 started from phase 1's weights, bertkit's way."""
    need(HDF5)
    out = tmp_path / "phase2"
    assert main(["pretrain", f"--input_dir={HDF5}", f"--output_dir={out}", f"--model={nvidia_checkpoint['checkpoint']}",
                 f"--config_file={nvidia_checkpoint['config']}", f"--vocab_file={nvidia_checkpoint['vocab']}",
                 "--do_train", "--train_batch_size=8", "--max_steps=1", "--learning_rate=1e-9", "--no_cuda",
                 "--disable_progress_bar"]) == 0
    info = json.loads((out / "bertkit.json").read_text())
    assert info["base_model"] == str(nvidia_checkpoint["checkpoint"]) and info["config"] is None
    saved = load_file(out / "model.safetensors")
    assert saved["bert.embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert torch.allclose(saved["cls.predictions.bias"], nvidia_checkpoint["state"]["cls.predictions.bias"], atol=1e-6)


def test_pytorch_pretrained_bert_lm_finetuning_commands_run(tmp_path) -> None:
    """pytorch-pretrained-bert's lm_finetuning README: pregenerate_training_data.py, then
    finetune_on_pregenerated.py, flag for flag (MiniLM for bert-base-uncased: the same vocabulary)."""
    minilm, corpus = SHARED / "models" / "all-MiniLM-L6-v2", SHARED / "data" / "bert_sample_text" / "sample_text.txt"
    if not (minilm / "model.safetensors").is_file() or not corpus.is_file():
        pytest.skip("the shared MiniLM checkpoint or sample text is absent")
    training, finetuned = tmp_path / "training", tmp_path / "finetuned_lm"
    assert main(["pretrain-data", "--train_corpus", str(corpus), "--bert_model", str(minilm), "--do_lower_case",
                 "--output_dir", f"{training}/", "--epochs_to_generate", "3", "--max_seq_len", "256",
                 "--reduce_memory"]) == 0
    manifest = json.loads((training / "manifest.json").read_text())
    assert manifest["max_seq_length"] == 256 and len(manifest["shards"][0]["epoch_rows"]) == 3
    assert main(["pretrain", "--pregenerated_data", f"{training}/", "--bert_model", str(minilm), "--do_lower_case",
                 "--output_dir", f"{finetuned}/", "--epochs", "3", "--reduce_memory", "--loss_scale", "0",
                 "--no-progress"]) == 0
    info = json.loads((finetuned / "bertkit.json").read_text())
    assert info["base_model"] == str(minilm) and info["train"]["epochs"] == 3
    assert (finetuned / "model.safetensors").is_file()


def test_resume_with_dynamic_masking_is_bit_identical(wiki_records, tmp_path, monkeypatch) -> None:
    common = [*tiny(), "--max-steps", "6", "--batch-size", "8", "--lr", "1e-3", "--save-every", "3",
              "--eval-every", "none", "--eval-fraction", "0.05"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(pretrain_args(wiki_records, straight, *common)) == 0
    # Stop after 3 steps, as if killed, then continue in a fresh trainer from the step-3 checkpoint.
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", functools.partial(real_train, stop_after_steps=3))
    assert main(pretrain_args(wiki_records, resumed, *common)) == 0
    assert [p.name for p in trainer.checkpoint_dirs(resumed)] == ["step-3"]
    monkeypatch.setattr(trainer, "train", real_train)
    assert main(pretrain_args(wiki_records, resumed, *common, "--resume")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # Dynamic masking really re-masks: the same records give other masks with another batch seed.
    task = PretrainingTask(open_pretraining_data(wiki_records), Tokenizer.from_pretrained(UNCASED))
    items = [task.training_view(open_pretraining_data(wiki_records))[i] for i in range(8)]
    one = task.collate(items, rng=np.random.default_rng(1))["masked_positions"]
    two = task.collate(items, rng=np.random.default_rng(2))["masked_positions"]
    assert not torch.equal(one, two)


@pytest.mark.parametrize("path", [TFRECORD, HDF5], ids=["tfrecord", "hdf5"])
def test_tiny_pretrain_overfits_external_format(path, tmp_path) -> None:
    need(path, UNCASED)
    out = tmp_path / path.suffix.lstrip(".")
    start = initial_mlm_loss(path, path, 0.0)
    # 28 instances, 4 batches of 7 an epoch; evaluated on the same records with their stored masks.
    assert main(pretrain_args(path, out, *tiny(), "--eval-data", str(path), "--max-steps", "20",
                              "--batch-size", "7", "--lr", "2e-3", "--eval-every", "10")) == 0
    history = evals(out)
    # Every stored prediction (masked_lm_weights > 0 in the fixture's expected.npz) is scored.
    stored = int((np.load(FORMATS / "expected.npz")["masked_lm_weights"] > 0).sum())
    assert history[-1]["records"] == 28 and history[-1]["masked_tokens"] == stored
    print(f"{path.name}: MLM loss on its 28 instances {start:.3f} -> {history[-1]['mlm_loss']:.3f} in 20 steps; "
          f"NSP acc {history[-1]['nsp_accuracy']:.3f}")
    assert start - history[-1]["mlm_loss"] > 2.0
    assert json.loads((out / "bertkit.json").read_text())["masking"] == "static"


def test_resume_on_hdf5_with_dynamic_re_masking(tmp_path, monkeypatch) -> None:
    need(HDF5, UNCASED)
    common = [*tiny(), "--max-steps", "8", "--batch-size", "7", "--lr", "1e-3", "--save-every", "4",
              "--eval-every", "none", "--eval-fraction", "0", "--masking", "dynamic"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(pretrain_args(HDF5, straight, *common)) == 0
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", functools.partial(real_train, stop_after_steps=4))
    assert main(pretrain_args(HDF5, resumed, *common)) == 0
    monkeypatch.setattr(trainer, "train", real_train)
    assert main(pretrain_args(HDF5, resumed, *common, "--resume")) == 0
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Re-masking starts from the original text: no [MASK] of the stored draw survives unmasking.
    task = PretrainingTask(open_pretraining_data(HDF5), Tokenizer.from_pretrained(UNCASED), masking="dynamic")
    data = open_pretraining_data(HDF5)
    view = task.training_view(data)
    for i in range(len(data)):
        stored = data[i]
        restored = view[i]["input_ids"]
        assert (restored[stored["masked_positions"]] == stored["masked_ids"]).all()
        assert not (restored == 103).any()  # [MASK]


def restaurant_corpus(path: Path, limit: int) -> int:
    """One sentence per line from the SemEval restaurant training XML; returns the count."""
    texts = [s.findtext("text") for s in ET.parse(ABSA / "Restaurants_Train_v2.xml").getroot().iter("sentence")]
    texts = [t.strip() for t in texts if t and t.strip()][:limit]
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return len(texts)


def test_continued_mlm_pretraining_of_minilm_then_finetune_atsc(minilm_dir, tmp_path) -> None:
    need(ABSA / "Restaurants_Train_v2.xml")
    corpus = tmp_path / "restaurants.txt"
    assert restaurant_corpus(corpus, 600) == 600
    records = tmp_path / "records"
    # MLM only (packed rows, no NSP), the checkpoint's own tokenizer: MiniLM has no pre-training heads.
    assert main(["pretrain-data", "--input", str(corpus), "--tokenizer", str(minilm_dir), "--output-dir",
                 str(records), "--no-nsp", "--max-seq-length", "64", "--max-predictions-per-seq", "10"]) == 0
    adapted = tmp_path / "minilm-restaurants"
    assert main(pretrain_args(records, adapted, "--model", str(minilm_dir), "--max-steps", "8", "--batch-size", "8",
                              "--lr", "1e-4", "--eval-fraction", "0.1", "--eval-every", "4")) == 0
    history = evals(adapted)
    print(f"MiniLM on restaurants: held-out MLM loss {history[0]['mlm_loss']:.3f} (step 4) -> "
          f"{history[-1]['mlm_loss']:.3f} (step 8)")
    assert "nsp_accuracy" not in history[-1] and np.isfinite(history[-1]["mlm_loss"])
    base, new = load_file(minilm_dir / "model.safetensors"), load_file(adapted / "model.safetensors")
    # The encoder moved; without NSP the pooler got no gradient (and no weight decay): unchanged.
    assert not torch.equal(base["encoder.layer.0.attention.self.query.weight"],
                           new["bert.encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(base["pooler.dense.weight"], new["bert.pooler.dense.weight"])
    assert "cls.predictions.transform.dense.weight" in new
    # The adapted checkpoint is a --model for fine-tuning as it is (BERT-ADA: domain MLM, then ATSC).
    tuned = tmp_path / "atsc"
    assert main(["finetune", "--task", "atsc", "--model", str(adapted), "--data-dir", str(ABSA),
                 "--domain", "restaurants", "--output-dir", str(tuned), "--max-steps", "3", "--batch-size", "8",
                 "--max-seq-length", "64", "--eval-every", "none", "--device", "cpu", "--no-progress"]) == 0
    finetuned = load_file(tuned / "model.safetensors")
    assert "classifier.weight" in finetuned
    assert (tuned / "bertkit.json").is_file() and json.loads((tuned / "bertkit.json").read_text())["base_model"] == str(adapted)


def test_records_of_another_vocabulary_are_refused(tmp_path, capsys) -> None:
    need(SAMPLE, CHINESE, UNCASED, TFRECORD)
    chinese = tmp_path / "zh-records"
    assert main(["pretrain-data", "--input", str(SAMPLE), "--tokenizer", str(CHINESE), "--output-dir", str(chinese),
                 "--max-seq-length", "64"]) == 0
    zh_hash = json.loads((chinese / "manifest.json").read_text())["vocab_hash"]
    uncased_hash = Tokenizer.from_pretrained(UNCASED).vocab_hash
    out = tmp_path / "out"
    assert main(pretrain_args(chinese, out, *tiny(), "--max-steps", "2")) == 1
    err = capsys.readouterr().err
    assert zh_hash in err and uncased_hash in err and "vocabulary" in err
    assert not (out / "log.jsonl").exists()
    # TFRecords name no vocabulary: ids beyond the tokenizer's 21128 Chinese tokens give it away.
    assert main(pretrain_args(TFRECORD, out, "--config", "tiny", "--tokenizer", str(CHINESE), "--max-steps", "2")) == 1
    err = capsys.readouterr().err
    assert str(TFRECORD) in err and "21128" in err and "record" in err


def test_corrupted_shard_and_bad_masking_fail_before_training(wiki_records, tmp_path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(wiki_records, broken)
    shard = broken / "shard-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    out = tmp_path / "out"
    assert main(pretrain_args(broken, out, *tiny(), "--max-steps", "2")) == 1
    err = capsys.readouterr().err
    assert "shard-00000.arrow" in err and "checksum" in err
    assert not out.exists()
    # Records built for dynamic masking store no masks: static masking of them is refused.
    assert main(pretrain_args(wiki_records, out, *tiny(), "--max-steps", "2", "--masking", "static")) == 1
    assert "--masking dynamic" in capsys.readouterr().err


def test_each_training_epoch_reads_one_generated_epoch(tmp_path) -> None:
    """`pretrain-data --dupe-factor 3` then `pretrain --epochs 1`: one pass over the text (the
    records of generated epoch 0), as finetune_on_pregenerated.py reads pregenerated epochs. Every
    epoch read all the records: `--epochs 1` trained 3 passes over the text, `--epochs 3` nine,
    each static mask three times."""
    need(WIKI, UNCASED)
    corpus = tmp_path / "wiki.txt"
    with WIKI.open(encoding="utf-8") as f:
        corpus.write_text("".join(next(f) for _ in range(300)), encoding="utf-8")
    records = tmp_path / "records"
    assert main(["pretrain-data", "--input", str(corpus), "--tokenizer", str(UNCASED), "--output-dir", str(records),
                 "--wikitext", "--max-seq-length", "64", "--dupe-factor", "3"]) == 0
    data = open_pretraining_data(records)
    train_part, _ = split_held_out(data, 0.05, 3)
    task = PretrainingTask(data, Tokenizer.from_pretrained(UNCASED))
    features = task.training_view(train_part)
    epoch_rows = data.manifest["shards"][0]["epoch_rows"]
    generated = np.repeat(np.arange(3), epoch_rows)[train_part.indices]  # one shard: its epochs in order
    config = TrainConfig(batch_size=16)
    for epoch in range(4):
        batches = trainer.global_batches_of_epoch(task, None, len(features), config, epoch, 16, DistInfo())
        assert all(b.size for b in batches)
        read = np.sort(np.concatenate(batches))
        assert np.array_equal(read, np.flatnonzero(generated == epoch % 3)), epoch  # each once, no other
    out = tmp_path / "run"
    assert main(pretrain_args(records, out, *tiny(), "--epochs", "1", "--batch-size", "16",
                              "--eval-fraction", "0.05", "--eval-every", "none")) == 0
    start = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert start["total_steps"] == math.ceil((generated == 0).sum() / 16)  # not len(features) / 16


def test_a_pretraining_checkpoint_is_a_model_for_finetuning_and_transformers(wiki_records, tmp_path) -> None:
    """Fine-tuning from an intermediate pre-training checkpoint (`--model RUN/checkpoints/step-N`,
    the usual way to compare pre-training lengths) failed with "no weights found"."""
    out = tmp_path / "pre"
    assert main(pretrain_args(wiki_records, out, *tiny(), "--max-steps", "4", "--save-every", "2",
                              "--batch-size", "8", "--eval-every", "none")) == 0
    step2 = out / "checkpoints" / "step-2"
    saved = torch.load(step2 / "model.pt", weights_only=True)
    from bertkit.modeling.heads import BertForSequenceClassification

    classifier = BertForSequenceClassification.from_pretrained(step2)
    assert all(torch.equal(tensor, saved[f"bert.{name}"]) for name, tensor in classifier.bert.state_dict().items())
    exported = tmp_path / "exported"
    assert main(["convert", str(step2), str(exported)]) == 0
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertForPreTraining.from_pretrained(exported).eval()
    ours = BertForPreTraining.from_pretrained(step2).eval()
    batch = Tokenizer.from_pretrained(step2)(["the quick brown fox", "a second , longer sentence here"])
    real = batch["attention_mask"].bool()  # padded positions' logits are not defined
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).mlm_logits[real], reference(**batch).prediction_logits[real],
                                   rtol=0, atol=1e-5)


def test_best_metric_for_pretraining_is_checked_and_kept(wiki_records, tmp_path, capsys) -> None:
    """Held-out evaluations report `loss` (MLM + NSP, the training objective), and --best-metric loss
    keeps the model by it; without held-out records the flag has nothing to judge and is refused."""
    out = tmp_path / "by-loss"
    assert main(pretrain_args(wiki_records, out, *tiny(), "--max-steps", "4", "--batch-size", "8",
                              "--eval-fraction", "0.05", "--eval-every", "2", "--best-metric", "loss")) == 0
    history = evals(out)
    assert len(history) == 2
    for h in history:  # NSP adds about ln 2 to the MLM loss of a barely trained model
        assert 0.3 < h["loss"] - h["mlm_loss"] < 1.5
    assert json.loads((out / "bertkit.json").read_text())["main_metric"] == "loss"
    best = min(history, key=lambda h: h["loss"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["loss"] == best["loss"] and metrics["best_step"] == 2 * (history.index(best) + 1)
    capsys.readouterr()
    assert main(pretrain_args(wiki_records, tmp_path / "none", *tiny(), "--max-steps", "2",
                              "--eval-fraction", "0", "--best-metric", "loss")) == 1
    assert "--best-metric loss: there are no held-out records to evaluate" in capsys.readouterr().err
    assert main(pretrain_args(wiki_records, tmp_path / "typo", *tiny(), "--max-steps", "2",
                              "--eval-fraction", "0.05", "--best-metric", "nsp_acc")) == 1
    assert ("--best-metric nsp_acc: the evaluations of this run report loss, masked_tokens, mlm_accuracy, mlm_loss, "
            "nsp_accuracy, perplexity, records (did you mean nsp_accuracy?)") in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
