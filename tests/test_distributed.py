"""Two processes on CPU (gloo), started by torchrun exactly as users start them.

The parity tests rest on one fact: with dropout off, 2 ranks x per-device batch B compute the same
mean gradient as 1 process with batch 2B, so loss curves and weights agree to float rounding.
Starting processes is the slow part (~10 s each on a busy 2-core machine), so there are only two
launches: `torchrun -m bertkit finetune` (the user's command), and this file run as a torchrun
worker (`python -m torch.distributed.run ... tests/test_distributed.py WORKDIR`) that runs several
scenarios in one process group and leaves JSON results for the tests below.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from bertkit.cli import main
from bertkit.config import TrainConfig, preset
from bertkit.modeling.heads import BertForSequenceClassification
from bertkit.tasks import TaskOptions, get_task_class
from bertkit.tokenization import Tokenizer
from bertkit.training import distributed, trainer
from bertkit.training.distributed import DistInfo

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with the gloo backend is not available"),
]

TRAIN_ROWS = 64  # divisible by the global batch 16: world > 1 drops a last partial batch
DEV_ROWS = 51  # odd: 2 ranks evaluate 26 + 25 features
MAX_LEN = "64"
TOL = 1e-5


# ---- fixtures ------------------------------------------------------------------------------------
def sst2_dir(directory: Path, shared_dir: Path, train: slice, dev: slice) -> Path:
    lines = (shared_dir / "data" / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.tsv").write_text("\n".join([lines[0], *lines[1:][train]]) + "\n", encoding="utf-8")
    (directory / "dev.tsv").write_text("\n".join([lines[0], *lines[1:][dev]]) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def work(tmp_path_factory, shared_dir: Path) -> dict[str, Path]:
    """A tiny dropout-free BERT with the real uncased vocab, and real SST-2 slices."""
    root = tmp_path_factory.mktemp("dist")
    vocab = shared_dir / "models" / "bert-base-uncased" / "vocab.txt"
    if not vocab.is_file():
        pytest.skip(f"{vocab} is absent")
    torch.manual_seed(0)
    model = BertForSequenceClassification(preset("tiny", vocab_size=30522, hidden_dropout_prob=0.0,
                                                  attention_probs_dropout_prob=0.0))
    model.init_weights()
    model.save_pretrained(root / "model", tokenizer=Tokenizer.from_pretrained(vocab, do_lower_case=True))
    return {
        "root": root,
        "model": root / "model",
        "data": sst2_dir(root / "sst2", shared_dir, slice(0, TRAIN_ROWS), slice(1000, 1000 + DEV_ROWS)),
        "other_data": sst2_dir(root / "sst2-other", shared_dir, slice(TRAIN_ROWS, 2 * TRAIN_ROWS),
                               slice(1000, 1000 + DEV_ROWS)),
        "cache": root / "cache",
        "sample": shared_dir / "data" / "bert_sample_text" / "sample_text.txt",
    }


def finetune_args(work: dict[str, Path], out: Path, batch_size: int, *extra: str) -> list[str]:
    return ["finetune", "--task", "sst2", "--model", str(work["model"]), "--data-dir", str(work["data"]),
            "--output-dir", str(out), "--batch-size", str(batch_size), "--lr", "5e-4", "--device", "cpu",
            "--seed", "3", "--no-progress", "--log-every", "1", "--max-seq-length", MAX_LEN, *extra]


PARITY_FLAGS = ("--max-steps", "8", "--eval-every", "4", "--save-every", "4", "--keep-checkpoints", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], work: dict[str, Path], log_name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BERTKIT_CACHE": str(work["cache"])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    (work["root"] / log_name).write_text(proc.stdout + proc.stderr)
    return proc


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """One process, batch 16: what 2 ranks x batch 8 must reproduce."""
    out = work["root"] / "one-process"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERTKIT_CACHE", str(work["cache"]))
        assert main(finetune_args(work, out, 16, *PARITY_FLAGS)) == 0
    return out


@pytest.fixture(scope="module")
def two_ranks(work) -> Path:
    """`torchrun --nproc-per-node 2 -m bertkit finetune ... --batch-size 8`."""
    out = work["root"] / "two-ranks"
    proc = torchrun(["-m", "bertkit", *finetune_args(work, out, 8, *PARITY_FLAGS)], work, "two-ranks.log")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def scenarios(work) -> dict[str, Any]:
    """This file as a torchrun worker: every rank's results, keyed by scenario."""
    sample = work["sample"]
    if sample.is_file():  # pre-training records for the pretrain scenario (22 x 2 instances)
        assert main(["pretrain-data", "--input", str(sample), "--tokenizer", str(work["model"]),
                     "--output-dir", str(work["root"] / "records"), "--max-seq-length", MAX_LEN,
                     "--dupe-factor", "2", "--seed", "3"]) == 0
        no_dropout = preset("tiny", vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (work["root"] / "tiny-no-dropout.json").write_text(json.dumps(no_dropout.to_hf_dict()))
    # --max-restarts 1: the worker's first attempt loses rank 1 (SIGKILL) after a checkpoint, as a
    # crashed or preempted process would, and torchrun restarts both ranks (_scenario_elastic).
    proc = torchrun(["--max-restarts", "1", str(Path(__file__).resolve()), str(work["root"])], work, "scenarios.log")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((work["root"] / "results" / f"rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": ranks, "dir": work["root"] / "results"}


def log_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / f"step-{step}" / "model.pt", weights_only=True)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---- the user's command: torchrun -m bertkit finetune ----------------------------------------------
def test_two_ranks_match_one_process_with_double_batch(reference, two_ranks) -> None:
    ref_losses = [r["loss"] for r in log_records(reference) if "loss" in r]
    dist_losses = [r["loss"] for r in log_records(two_ranks) if "loss" in r]
    assert len(ref_losses) == len(dist_losses) == 8
    assert max(abs(a - b) for a, b in zip(ref_losses, dist_losses)) < TOL, (ref_losses, dist_losses)
    assert ref_losses[-1] != ref_losses[0]  # it trained
    for step in (4, 8):
        assert max_diff(checkpoint_weights(reference, step), checkpoint_weights(two_ranks, step)) < TOL


def test_distributed_eval_equals_single_process_on_odd_dev_set(reference, two_ranks) -> None:
    ref = [r for r in log_records(reference) if "eval" in r]
    got = [r for r in log_records(two_ranks) if "eval" in r]
    assert [r["step"] for r in got] == [4, 8]
    # Accuracy over 51 examples is k/51: one missing, duplicated or differently predicted example shows.
    assert [{**r["eval"], "loss": None} for r in got] == [{**r["eval"], "loss": None} for r in ref]
    # The dev loss is summed per rank, then over ranks: the same mean in another summation order.
    assert [r["eval"]["loss"] for r in got] == pytest.approx([r["eval"]["loss"] for r in ref], rel=1e-6)
    dev = json.loads((two_ranks / "metrics.json").read_text())["dev"]
    ref_dev = json.loads((reference / "metrics.json").read_text())["dev"]
    assert {**dev, "loss": None} == {**ref_dev, "loss": None}
    assert dev["loss"] == pytest.approx(ref_dev["loss"], rel=1e-6)


def test_log_states_world_size_and_global_batch(two_ranks) -> None:
    start = log_records(two_ranks)[0]
    assert start["event"] == "start"
    assert start["world_size"] == 2 and start["global_batch"] == 8 * 2 * 1 and start["examples"] == TRAIN_ROWS
    # Only rank 0 writes the log: one record per step, not one per rank.
    steps = [r["step"] for r in log_records(two_ranks) if "loss" in r]
    assert steps == list(range(1, 9))


def test_two_rank_checkpoint_resumes_in_one_process(work, reference, two_ranks, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BERTKIT_CACHE", str(work["cache"]))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    # The 2-rank run's step-4 checkpoint, continued by 1 process with the same global batch (16).
    shutil.copytree(two_ranks / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
    state = json.loads((resumed / "checkpoints" / "step-4" / trainer.STATE_FILE).read_text())
    assert state["world_size"] == 2 and state["examples_in_epoch"] == TRAIN_ROWS  # epoch 0 complete
    assert main(finetune_args(work, resumed, 16, *PARITY_FLAGS, "--resume")) == 0
    assert max_diff(checkpoint_weights(reference, 8), checkpoint_weights(resumed, 8)) < TOL
    assert (resumed / "model.safetensors").is_file() and (resumed / "bertkit.json").is_file()
    losses = [r["loss"] for r in log_records(resumed) if "loss" in r]
    ref_losses = [r["loss"] for r in log_records(reference) if "loss" in r]
    assert len(losses) == 4 and max(abs(a - b) for a, b in zip(losses, ref_losses[4:])) < TOL


# ---- scenarios run inside one 2-rank process group ------------------------------------------------------
def test_only_rank_zero_writes(scenarios) -> None:
    rank0, rank1 = (r["cli_writes"] for r in scenarios["ranks"])
    assert rank0["rc"] == rank1["rc"] == 0
    written = {Path(p).name for p in rank0["writes"]}
    # The audit hook sees rank 0's writes (so it works) ...
    assert {"log.jsonl", "metrics.json", "config.json"} <= written
    assert any("checkpoints" in p for p in rank0["writes"])
    assert any("features" in p for p in rank0["writes"])  # the tokenized-features cache, written once
    # ... and nothing at all from rank 1 under the run or cache directories.
    assert rank1["writes"] == []


def test_accumulation_syncs_only_on_last_micro_step_and_matches(scenarios, reference) -> None:
    for rank in scenarios["ranks"]:
        acc = rank["accum"]
        assert acc["forwards"] == 16  # 8 optimizer steps x 2 micro-steps
        assert acc["synced_backwards"] == 8  # one gradient all-reduce per optimizer step
    ref_losses = [r["loss"] for r in log_records(reference) if "loss" in r]
    losses = scenarios["ranks"][0]["accum"]["losses"]
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < TOL
    weights = torch.load(scenarios["dir"] / "accum.pt", weights_only=True)
    assert max_diff(checkpoint_weights(reference, 8), weights) < TOL


def test_distributed_prediction_covers_an_odd_dev_set_exactly(scenarios) -> None:
    for rank in scenarios["ranks"]:
        acc = rank["accum"]
        assert acc["eval_count"] == DEV_ROWS  # 26 + 25, no padding duplicates, none missing
        assert acc["eval_diff"] < TOL and acc["eval_argmax_equal"]


def test_ranks_read_disjoint_slices_that_cover_each_global_batch(scenarios, work) -> None:
    mine = [r["accum"]["loader_batches"] for r in scenarios["ranks"]]
    assert len(mine[0]) == len(mine[1]) == 16  # micro-batches per rank over 2 epochs
    task = get_task_class("sst2")(TaskOptions(data_dir=str(work["data"])))
    config = TrainConfig(batch_size=4, seed=3, max_steps=8)
    expected = [b.tolist() for epoch in (0, 1) for b in trainer.global_batches_of_epoch(
        task, None, TRAIN_ROWS, config, epoch, 8, DistInfo(rank=0, world_size=2))]
    for a, b, whole in zip(mine[0], mine[1], expected):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == whole
    first_epoch = [i for a, b in zip(mine[0][:8], mine[1][:8]) for i in a + b]
    assert sorted(first_epoch) == list(range(TRAIN_ROWS))  # each example once per epoch


def test_pretraining_ranks_read_disjoint_records(scenarios) -> None:
    ranks = [r["pretrain"] for r in scenarios["ranks"]]
    if "skipped" in ranks[0]:
        pytest.skip(ranks[0]["skipped"])
    assert ranks[0]["rc"] == ranks[1]["rc"] == 0
    mine = [r["loader_batches"] for r in ranks]
    # The loaders get the whole epoch's plan (training epoch 0 reads generated epoch 0 of the 2:
    # 22 records -> 2 global batches of 8 and a short last one, split as evenly as it goes: its
    # loss is weighted by each rank's share); the run stops after 2 of them.
    assert len(mine[0]) == len(mine[1]) == 3
    assert all(len(a) == len(b) == 4 for a, b in zip(mine[0][:2], mine[1][:2]))
    assert 1 <= len(mine[1][2]) <= len(mine[0][2]) <= len(mine[1][2]) + 1
    seen = [i for a, b in zip(*mine) for i in a + b]
    assert len(seen) == len(set(seen)) > 20  # every record of the generated epoch once, by one rank


def test_pretraining_on_two_ranks_equals_one_process_with_the_whole_batch(scenarios, work) -> None:
    """The MLM loss averages over the masked tokens of the whole global batch, not of each rank's
    half (rows hold different numbers of masked tokens): 2 ranks x 4 records give the weights and
    losses of 1 process x 8 (they differed by 2.5e-4 after 6 steps when each rank averaged its own)."""
    ranks = [r["pretrain"] for r in scenarios["ranks"]]
    if "skipped" in ranks[0]:
        pytest.skip(ranks[0]["skipped"])
    one = work["root"] / "pretrain-one-process"
    assert main(pretrain_args(work, one, 8)) == 0
    two = work["root"] / "pretrain"
    assert [r["loss"] for r in log_records(two) if "loss" in r] == pytest.approx(
        [r["loss"] for r in log_records(one) if "loss" in r], rel=1e-5)
    assert max_diff(load_file(two / "model.safetensors"), load_file(one / "model.safetensors")) < 2e-5
    # FSDP2's reduce-scatter averages over ranks as DDP's all-reduce does: the same weights.
    assert ranks[0]["fsdp_rc"] == ranks[1]["fsdp_rc"] == 0
    sharded = work["root"] / "pretrain-fsdp"
    assert max_diff(load_file(sharded / "model.safetensors"), load_file(one / "model.safetensors")) < 2e-5


def test_torchrun_restart_after_a_killed_worker_resumes_exactly(scenarios, reference) -> None:
    """torchrun --max-restarts: rank 1 is killed after the step-4 checkpoint; the restarted group
    joins a new process group (it hung or failed in gloo's connect on the old attempt's addresses)
    and --resume ends where an uninterrupted run ends."""
    for rank in scenarios["ranks"]:
        assert rank["elastic"] == {"restart": 1, "rc": 0}
    out = scenarios["dir"].parent / "elastic"
    assert max_diff(checkpoint_weights(reference, 8), checkpoint_weights(out, 8)) < TOL
    records = log_records(out)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))  # none lost, none twice
    assert [r["step"] for r in records if "eval" in r] == [4, 8]
    assert [r["event"] for r in records if "event" in r] == ["start", "end"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_resume_on_other_data_is_refused_on_every_rank(scenarios) -> None:
    for rank in scenarios["ranks"]:
        refused = rank["resume_other_data"]
        assert refused["rc"] == 1
        assert "was written for other training data" in refused["stderr"], refused["stderr"]


def test_resume_where_ranks_see_different_checkpoints_is_refused(scenarios) -> None:
    """--output-dir on each machine's own disk: rank 1 finds no checkpoint where rank 0 finds step 4.
    Both stop with the fix, instead of training from different steps and hanging at the end."""
    for rank in scenarios["ranks"]:
        refused = rank["unshared_resume"]
        assert refused["rc"] == 1
        assert "rank 0: step-4, rank 1: none" in refused["stderr"], refused["stderr"]
        assert "file system every machine sees" in refused["stderr"]


def test_every_machine_writes_its_own_features_cache(scenarios) -> None:
    """Two machines of one process each, with caches on their own disks: the second machine's first
    process writes its cache too (it tokenized on every run, and so did all its processes)."""
    for rank in scenarios["ranks"]:
        assert rank["node_caches"]["files"] == 1 and rank["node_caches"]["features"] == TRAIN_ROWS


def test_too_few_examples_for_the_world_size_names_the_flags(scenarios) -> None:
    for rank in scenarios["ranks"]:
        message = rank["too_few"]
        assert "2 processes" in message and "--batch-size" in message, message


def test_fsdp2_on_cpu_matches_a_full_replica_and_saves_an_hf_directory(scenarios, work) -> None:
    fsdp = scenarios["ranks"][0]["fsdp"]
    assert fsdp["sharded_rows"] == [15261, 15261]  # word embeddings split across the 2 ranks
    assert fsdp["max_diff"] < TOL and fsdp["loss_diff"] < TOL
    saved = scenarios["dir"] / "fsdp-model"
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        p.name for p in work["model"].iterdir())  # config, weights, tokenizer files: a normal HF dir
    reloaded = BertForSequenceClassification.from_pretrained(saved).state_dict()
    expected = torch.load(scenarios["dir"] / "fsdp-replica.pt", weights_only=True)
    assert max_diff(reloaded, expected) < TOL
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForSequenceClassification.from_pretrained(saved)
    assert torch.equal(hf.bert.embeddings.word_embeddings.weight, reloaded["bert.embeddings.word_embeddings.weight"])


def optimizer_moments(out: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(out / "checkpoints" / f"step-{step}" / "training.pt", weights_only=False)["optimizer"]
    return {f"{i}.{name}": value for i, moments in state["state"].items() for name, value in moments.items()
            if name != "step"}


def test_fsdp_checkpoints_hold_the_whole_run_and_resume_exactly(scenarios, work, reference, tmp_path,
                                                                monkeypatch) -> None:
    """--fsdp checkpoints are the unsharded weights and AdamW moments, in a plain run's layout: they
    equal the one-process run's, resume under --fsdp, and resume in one process without --fsdp; a
    DDP run's checkpoint resumes under --fsdp."""
    for rank in scenarios["ranks"]:
        assert rank["fsdp_checkpoints"] == {"rc": 0, "rc_resumed": 0, "rc_from_ddp": 0}
    ddp_run, from_ddp = work["root"] / "cli", work["root"] / "fsdp-from-ddp"
    assert max_diff(checkpoint_weights(ddp_run, 4), checkpoint_weights(from_ddp, 4)) < TOL
    assert max_diff(optimizer_moments(ddp_run, 4), optimizer_moments(from_ddp, 4)) < TOL
    fsdp_run, fsdp_resumed = work["root"] / "fsdp-cli", work["root"] / "fsdp-resumed"
    for step in (4, 8):
        assert max_diff(checkpoint_weights(reference, step), checkpoint_weights(fsdp_run, step)) < TOL
        assert max_diff(optimizer_moments(reference, step), optimizer_moments(fsdp_run, step)) < TOL
    ref_losses = [r["loss"] for r in log_records(reference) if "loss" in r]
    assert max_diff(checkpoint_weights(reference, 8), checkpoint_weights(fsdp_resumed, 8)) < TOL
    resumed_losses = [r["loss"] for r in log_records(fsdp_resumed) if "loss" in r]
    assert len(resumed_losses) == 4 and max(abs(a - b) for a, b in zip(resumed_losses, ref_losses[4:])) < TOL
    assert (fsdp_resumed / "model.safetensors").is_file()
    # A checkpoint is a model directory too; config.json names the model's class, not FSDP2's subclass.
    described = json.loads((fsdp_run / "checkpoints" / "step-4" / "config.json").read_text())
    assert described["architectures"] == ["BertForSequenceClassification"]

    monkeypatch.setenv("BERTKIT_CACHE", str(work["cache"]))
    alone = tmp_path / "alone"
    shutil.copytree(fsdp_run / "checkpoints" / "step-4", alone / "checkpoints" / "step-4")
    assert main(finetune_args(work, alone, 16, *PARITY_FLAGS, "--resume")) == 0
    assert max_diff(checkpoint_weights(reference, 8), checkpoint_weights(alone, 8)) < TOL


def test_fsdp_in_one_process_is_refused_with_the_fix(work) -> None:
    model = BertForSequenceClassification.from_pretrained(work["model"])
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N"):
        distributed.wrap_fsdp(model, DistInfo())


# ---- the worker: `python -m torch.distributed.run --nproc-per-node 2 tests/test_distributed.py WORKDIR` --
class _WriteAudit:
    """Records file-system writes under a directory, through Python's audit hooks (PEP 578): open()
    for writing, os.open with O_CREAT/O_WRONLY/O_RDWR, mkdir, rename/replace, remove, rmtree."""

    def __init__(self, root: Path):
        self.root, self.writes, self.on = str(root), [], False
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.on or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if not os.path.abspath(path).startswith(self.root):
            return
        if event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                self.writes.append(path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            self.writes.append(path)
        elif event in ("os.rename", "shutil.copyfile"):  # (src, dst, ...): the destination is written
            self.writes += [path, os.fsdecode(args[1])]


def _features(work: dict[str, Path], rows: str = "data"):
    task = get_task_class("sst2")(TaskOptions(data_dir=str(work[rows]), max_seq_length=int(MAX_LEN)))
    return task, task.encode(task.read("train"), Tokenizer.from_pretrained(work["model"]), int(MAX_LEN))


def _scenario_cli_writes(work, info: DistInfo, audit: _WriteAudit) -> dict[str, Any]:
    audit.writes.clear()
    audit.on = True
    rc = main(finetune_args(work, work["root"] / "cli", 8, "--max-steps", "4", "--eval-every", "2",
                            "--save-every", "2"))
    audit.on = False
    return {"rc": rc, "writes": list(audit.writes)}


def _scenario_resume_other_data(work, info: DistInfo) -> dict[str, Any]:
    args = finetune_args(work, work["root"] / "cli", 8, "--max-steps", "4", "--resume")
    args[args.index("--data-dir") + 1] = str(work["other_data"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    return {"rc": rc, "stderr": err.getvalue()}


def _scenario_unshared_resume(work, info: DistInfo) -> dict[str, Any]:
    """--resume where each rank's --output-dir is its own (as on machines without a shared disk):
    rank 0's holds the finished run of _scenario_cli_writes, rank 1's nothing."""
    out = work["root"] / ("cli" if info.is_main else "cli-rank1-disk")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(finetune_args(work, out, 8, "--max-steps", "4", "--eval-every", "2", "--save-every", "2", "--resume"))
    return {"rc": rc, "stderr": err.getvalue()}


def _scenario_accum(work, info: DistInfo) -> dict[str, Any]:
    """B=4 x 2 ranks x 2 micro-steps: the reference's global batch 16, through the trainer API."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    counts = {"synced_backwards": 0, "forwards": 0}
    loader_batches: list[list[int]] = []

    class CountingDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

            def hook(state, bucket):
                if bucket.index() == 0:  # each bucket is reduced once per synced backward
                    counts["synced_backwards"] += 1
                return allreduce_hook(state, bucket)

            self.register_comm_hook(None, hook)

    def recording_loader(features, batches, *args, **kwargs):
        loader_batches.extend(b.tolist() for b in batches)
        return real_loader(features, batches, *args, **kwargs)

    real_ddp, real_loader = torch.nn.parallel.DistributedDataParallel, trainer.make_loader
    torch.nn.parallel.DistributedDataParallel, trainer.make_loader = CountingDDP, recording_loader
    try:
        task, features = _features(work)
        out = work["root"] / "accum"
        config = TrainConfig(output_dir=str(out), max_steps=8, batch_size=4, grad_accum=2, lr=5e-4,
                             device="cpu", seed=3, eval_every="none", progress=False, log_every=1)
        trainer.seed_everything(config.seed)
        model = BertForSequenceClassification.from_pretrained(work["model"], **task.model_config_updates())
        model.register_forward_pre_hook(lambda *_: counts.__setitem__("forwards", counts["forwards"] + 1))
        result = trainer.train(task, model, features, None, config, info=info)
    finally:
        torch.nn.parallel.DistributedDataParallel, trainer.make_loader = real_ddp, real_loader
    trained_counts = dict(counts)  # before the prediction below adds forwards of its own
    losses = [r["loss"] for r in log_records(out) if "loss" in r] if info.is_main else []
    if info.is_main:
        torch.save(result.model.state_dict(), work["root"] / "results" / "accum.pt")
    # Distributed prediction (each rank a slice of the odd-sized dev set, gathered) against this
    # rank predicting all of it alone, with the trained (no longer near-constant) model.
    dev = task.encode(task.read("dev"), Tokenizer.from_pretrained(work["model"]), int(MAX_LEN))
    gathered = trainer.predict_features(task, result.model, dev, 8, info.device, info=info)
    alone = trainer.predict_features(task, result.model, dev, 8, info.device, info=DistInfo())
    eval_diff = max(float(abs(a - b).max()) for a, b in zip(gathered, alone))
    return {**trained_counts, "loader_batches": loader_batches, "losses": losses, "eval_count": len(gathered),
            "eval_diff": eval_diff, "eval_argmax_equal": [int(a.argmax()) for a in gathered] == [
                int(b.argmax()) for b in alone]}


def _scenario_too_few(work, info: DistInfo) -> str:
    task, features = _features(work)
    config = TrainConfig(output_dir=str(work["root"] / "too-few"), max_steps=2, batch_size=8,
                         device="cpu", eval_every="none", progress=False)
    try:
        # One example for two ranks (eight would now make one short step of four per rank).
        trainer.train(task, BertForSequenceClassification.from_pretrained(work["model"]), features[:1],
                      None, config, info=info)
    except ValueError as err:
        return str(err)
    return "no error"


def _scenario_node_caches(work, info: DistInfo) -> dict[str, Any]:
    """Each rank as the first process of its own machine (LOCAL_RANK 0), each with its own cache
    directory (BERTKIT_CACHE on a local disk): the cached training features each one finds after."""
    from bertkit.commands import common

    task = get_task_class("sst2")(TaskOptions(data_dir=str(work["data"]), max_seq_length=int(MAX_LEN)))
    own_machine = DistInfo(rank=info.rank, world_size=info.world_size, local_rank=0, device=info.device)
    os.environ["BERTKIT_CACHE"] = str(work["root"] / f"cache-node{info.rank}")
    try:
        features = common.encode_cached(task, "train", task.read("train"), Tokenizer.from_pretrained(work["model"]),
                                        int(MAX_LEN), own_machine)
        files = len(list(common.cache_dir().glob("sst2-train-*.pkl")))
    finally:
        os.environ["BERTKIT_CACHE"] = str(work["cache"])
    return {"files": files, "features": len(features)}


def _scenario_fsdp(work, info: DistInfo) -> dict[str, Any]:
    """3 AdamW steps of 2 accumulated micro-steps with FSDP2 (each rank a quarter of the global
    batch 16 per micro-step) against a full replica trained on the whole global batch."""
    from bertkit.training.optim import build_optimizer

    task, features = _features(work)
    config = TrainConfig(lr=5e-4, batch_size=4, grad_accum=2, max_steps=3)
    replica = BertForSequenceClassification.from_pretrained(work["model"], **task.model_config_updates())
    sharded = BertForSequenceClassification.from_pretrained(work["model"], **task.model_config_updates())
    distributed.wrap_fsdp(sharded, info)
    sharded_rows = distributed.all_gather_objects(
        sharded.bert.embeddings.word_embeddings.weight.to_local().shape[0], info)
    opt_replica, opt_sharded = build_optimizer(replica, config, info.device), build_optimizer(sharded, config, info.device)
    loss_diff = 0.0
    for step in range(3):
        global_batch = list(range(step * 16, step * 16 + 16))
        full = task.collate([features[i] for i in global_batch])
        replica_loss = replica(**full).loss
        replica_loss.backward()
        micro_losses = []
        for micro in range(2):
            part = global_batch[micro * 8:(micro + 1) * 8][info.rank * 4:(info.rank + 1) * 4]
            sync = contextlib.nullcontext() if micro == 1 else distributed.no_sync(sharded)
            with sync:
                loss = sharded(**task.collate([features[i] for i in part])).loss
                (loss / 2).backward()
            micro_losses.append(loss.detach())
        for model, opt in ((replica, opt_replica), (sharded, opt_sharded)):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        mean = distributed.all_reduce_mean(torch.stack(micro_losses).mean(), info)
        loss_diff = max(loss_diff, abs(float(mean) - float(replica_loss)))
    plain = distributed.full_model(sharded, info)
    out: dict[str, Any] = {"sharded_rows": sharded_rows, "loss_diff": loss_diff}
    if info.is_main:
        state = replica.state_dict()
        out["max_diff"] = max_diff(state, plain.state_dict())
        torch.save(state, work["root"] / "results" / "fsdp-replica.pt")
        plain.save_pretrained(work["root"] / "results" / "fsdp-model", tokenizer=Tokenizer.from_pretrained(work["model"]))
    distributed.barrier()
    return out


def _scenario_fsdp_checkpoints(work, info: DistInfo) -> dict[str, Any]:
    """`finetune --fsdp` with checkpoints (the parity flags of the one-process reference), then its
    step-4 checkpoint resumed by another --fsdp run; and the DDP run of _scenario_cli_writes resumed
    from its step 2 under --fsdp."""
    run, resumed, from_ddp = (work["root"] / name for name in ("fsdp-cli", "fsdp-resumed", "fsdp-from-ddp"))
    rc = main(finetune_args(work, run, 8, *PARITY_FLAGS, "--fsdp"))
    if info.is_main:
        shutil.copytree(run / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
        shutil.copytree(work["root"] / "cli" / "checkpoints" / "step-2", from_ddp / "checkpoints" / "step-2")
    distributed.barrier()
    rc_resumed = main(finetune_args(work, resumed, 8, *PARITY_FLAGS, "--fsdp", "--resume"))
    rc_from_ddp = main(finetune_args(work, from_ddp, 8, "--max-steps", "4", "--eval-every", "2", "--save-every", "2",
                                     "--fsdp", "--resume"))
    return {"rc": rc, "rc_resumed": rc_resumed, "rc_from_ddp": rc_from_ddp}


def pretrain_args(work, out: Path, batch_size: int) -> list[str]:
    """2 steps of MLM+NSP from scratch on the static records, dropout off (so that 2 ranks x 4 and
    1 process x 8 must give the same weights)."""
    return ["pretrain", "--data", str(work["root"] / "records"), "--config", str(work["root"] / "tiny-no-dropout.json"),
            "--output-dir", str(out), "--batch-size", str(batch_size), "--max-steps", "2", "--lr", "1e-3",
            "--eval-fraction", "0", "--eval-every", "none", "--device", "cpu", "--no-progress", "--log-every", "1"]


def _scenario_pretrain(work, info: DistInfo) -> dict[str, Any]:
    """`bertkit pretrain` on 2 ranks: the record indices each rank's loader was given."""
    if not (work["root"] / "records").is_dir():
        return {"skipped": f"no records: {work['sample']} is absent"}
    loader_batches: list[list[int]] = []

    def recording_loader(features, batches, *args, **kwargs):
        loader_batches.extend(b.tolist() for b in batches)
        return real_loader(features, batches, *args, **kwargs)

    real_loader, trainer.make_loader = trainer.make_loader, recording_loader
    try:
        rc = main(pretrain_args(work, work["root"] / "pretrain", 4))
    finally:
        trainer.make_loader = real_loader
    fsdp_rc = main([*pretrain_args(work, work["root"] / "pretrain-fsdp", 4), "--fsdp"])
    return {"rc": rc, "fsdp_rc": fsdp_rc, "loader_batches": loader_batches}


def _scenario_elastic(work, info: DistInfo) -> dict[str, Any]:
    """The parity run with --resume under torchrun --max-restarts 1. On the first attempt rank 1
    kills itself right after the step-4 checkpoint; torchrun then restarts both ranks, which run
    this again and continue from step 4."""
    import signal

    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    real_save = trainer.save_checkpoint

    def save_then_die(output_dir, model, optimizer, scheduler, scaler, state, *args, **kwargs):
        real_save(output_dir, model, optimizer, scheduler, scaler, state, *args, **kwargs)
        if restart == 0 and info.rank == 1 and state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.save_checkpoint = save_then_die
    os.environ["BERTKIT_CACHE"] = str(work["root"] / "cache-elastic")  # _scenario_cli_writes checks that rank 0 writes one
    try:
        rc = main(finetune_args(work, work["root"] / "elastic", 8, *PARITY_FLAGS, "--resume"))
    finally:
        trainer.save_checkpoint = real_save
        os.environ["BERTKIT_CACHE"] = str(work["cache"])
    return {"restart": restart, "rc": rc}


def _worker(root: Path) -> None:
    work = {"root": root, "model": root / "model", "data": root / "sst2", "other_data": root / "sst2-other",
            "cache": root / "cache-worker", "sample": Path("<pytest's shared dir>")}  # empty: rank 0 must write the features cache here
    os.environ["BERTKIT_CACHE"] = str(work["cache"])
    (root / "results").mkdir(exist_ok=True)
    audit = _WriteAudit(root)
    info = distributed.setup("cpu")
    # finetune leaves the process group at its end, and a group cannot be re-created under the
    # same torchrun rendezvous: keep it for the later scenarios.
    real_shutdown, distributed.shutdown = distributed.shutdown, lambda: None
    elastic = _scenario_elastic(work, info)
    if elastic["restart"] == 0:  # rank 0 of the killed attempt: torchrun stops it and restarts both
        sys.exit(1)
    results: dict[str, Any] = {"elastic": elastic, "cli_writes": _scenario_cli_writes(work, info, audit)}
    results["resume_other_data"] = _scenario_resume_other_data(work, info)
    results["unshared_resume"] = _scenario_unshared_resume(work, info)
    results["pretrain"] = _scenario_pretrain(work, info)
    results["fsdp_checkpoints"] = _scenario_fsdp_checkpoints(work, info)
    distributed.shutdown = real_shutdown
    results["accum"] = _scenario_accum(work, info)
    results["too_few"] = _scenario_too_few(work, info)
    results["node_caches"] = _scenario_node_caches(work, info)
    results["fsdp"] = _scenario_fsdp(work, info)
    (root / "results" / f"rank{info.rank}.json").write_text(json.dumps(results))
    distributed.shutdown()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


def test_ranks_after_the_first_keep_checkpoint_notes_to_themselves(shared_dir, monkeypatch, capsys) -> None:
    """Every rank loads the checkpoint; its 'newly initialised' note is printed by rank 0 only."""
    import logging

    logger = logging.getLogger("bertkit")
    level = logger.level
    try:
        for rank, expected in (("1", logging.ERROR), ("0", level)):
            logger.setLevel(level)
            monkeypatch.setenv("RANK", rank)
            assert main(["info", str(shared_dir / "models" / "all-MiniLM-L6-v2")]) == 0
            assert logger.level == expected
    finally:
        logger.setLevel(level)
