"""Pre-training as a Task for the one training loop: records in, MLM(+NSP) losses out.

    data = open_pretraining_data(path)                  # bertkit records, TFRecord or HDF5
    check_vocabulary(data, tokenizer, f"--data {path}") # refuse records made with another vocab
    train, held_out = split_held_out(data, 0.01, seed)  # index views, nothing is copied
    task = PretrainingTask(data, tokenizer, masking="dynamic")
    eval_set = task.eval_set(held_out)                  # masks drawn once, so evals compare
    train(task, model, task.training_view(train), eval_set, config)

Model class. Always `BertForPreTraining`. For MLM-only data (nsp_label -1 everywhere) the batch
carries no `next_sentence_label`, so the NSP loss is None and neither the pooler nor the NSP head
gets a gradient (torch optimizers skip parameters whose grad is None: no update, no weight decay).
`BertForMaskedLM` would have been the other choice, but it has no pooler: continued pre-training
of bert-base would then drop its NSP-trained pooler, and `bertkit finetune` of the result would
re-initialise the pooler its classification heads read. Keeping the class keeps the pooler.

Masking. "static" uses the masks stored in the records. "dynamic" draws new masks for every
batch (the trainer seeds `rng` per batch, so a resumed run re-draws the same masks). Records with
stored masks (bertkit static records, TFRecord, HDF5) can be re-masked: the original ids are put
back at the stored positions first (`masked_ids` holds them), so no [MASK] from the old draw leaks
into the new one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bertkit.data.records import Instance, collate_pretraining
from bertkit.tasks.base import DataError, Task, TaskOptions

MASKING_MODES = ("static", "dynamic")
VOCAB_SCAN_LIMIT = 20_000  # records checked for out-of-vocabulary ids when the data names no vocab
EVAL_MASK_SEED = 20_240_601  # held-out masks are drawn once with this seed: every eval sees the same


class IndexView:
    """Records `data[indices[i]]` as a map-style dataset (a train or held-out part, no copy)."""

    def __init__(self, data: Any, indices: np.ndarray, drawn_by: str | None = None,
                 training_segment_b: np.ndarray | None = None):
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.manifest = data.manifest
        self.drawn_by = drawn_by  # a held-out part: "documents", or "rows" and why (split_held_out)
        # Held-out NSP rows whose random B segment is training text: evaluation predicts no masks
        # there (PretrainingTask.eval_set), the NSP label still counts.
        self.training_segment_b = training_segment_b

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> Instance:
        return self.data[int(self.indices[i])]


class Unmasked:
    """Records with their stored masks undone: original ids back at the masked positions and
    empty `masked_positions` / `masked_ids`, ready for dynamic masking."""

    def __init__(self, data: Any):
        self.data = data
        self.manifest = data.manifest

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Instance:
        inst = dict(self.data[i])
        pos = inst["masked_positions"]
        if pos.size:
            ids = inst["input_ids"].copy()
            ids[pos] = inst["masked_ids"]
            inst["input_ids"] = ids
        inst["masked_positions"] = np.zeros(0, np.int32)
        inst["masked_ids"] = np.zeros(0, np.int32)
        return inst


def without_segment_b_masks(inst: Instance) -> Instance:
    """The row with segment B's masked tokens put back and not predicted (its text is training
    text; segment A's masks and the NSP label stay)."""
    pos = inst["masked_positions"]
    in_b = inst["token_type_ids"][pos] == 1
    if not in_b.any():
        return inst
    ids = inst["input_ids"].copy()
    ids[pos[in_b]] = inst["masked_ids"][in_b]
    return {**inst, "input_ids": ids, "masked_positions": pos[~in_b], "masked_ids": inst["masked_ids"][~in_b]}


def split_held_out(data: Any, fraction: float, seed: int) -> tuple[IndexView, IndexView | None]:
    """(training part, held-out part) of `data`, about `fraction` of the records held out (at
    least one when fraction > 0), seeded.

    Records that name their documents (`document_ids`, bertkit records) are held out by whole
    documents: with several epochs generated the same text sits in several rows, and a draw by
    row put 81% of the held-out 8-grams into training too (18% with one epoch). The held-out
    records are those made only of held-out documents, and NSP pairs whose A is held out (their
    B's masks are not predicted when B is training text); other mixed records are in neither
    part. Other records (TFRecord,
    HDF5, older shards) are drawn by row; `held_out_warning` says when that can leak."""
    n = len(data)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--eval-fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return IndexView(data, np.arange(n)), None
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise ValueError(f"--eval-fraction {fraction} leaves no training records out of {n}; "
                         f"lower it or give --eval-data")
    rng = np.random.default_rng([seed, 7])
    documents = data.document_ids() if hasattr(data, "document_ids") else None
    by_documents = (_held_out_documents(documents, k, rng, first_document_decides=data_has_nsp(data))
                    if documents is not None else None)
    if by_documents is not None:
        keep, held, training_b = by_documents
        return IndexView(data, keep), IndexView(data, held, drawn_by="documents", training_segment_b=training_b)
    held = np.sort(rng.choice(n, size=k, replace=False))
    keep = np.setdiff1d(np.arange(n), held, assume_unique=True)
    why = ("these records do not name their documents" if documents is None
           else "they hold too few documents to hold out whole ones")
    return IndexView(data, keep), IndexView(data, held, drawn_by=f"rows: {why}")


def _held_out_documents(documents: tuple[np.ndarray, np.ndarray], k: int, rng: np.random.Generator,
                        first_document_decides: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(training rows, held-out rows, held-out rows whose later documents are training text) drawn
    by whole documents, or None when there are too few documents for that (a corpus without blank
    lines is one document).

    A row is held out when all its documents are, or with `first_document_decides` (NSP records,
    [A's document, B's document]) when its A is: a random B comes from a held-out document only as
    often as the held-out fraction, so requiring both would leave almost only IsNext pairs (203 of
    203 held-out rows of one WikiText set) and make NSP accuracy meaningless. Training rows touch
    no held-out document."""
    offsets, values = documents
    starts = offsets[:-1]
    unique = np.unique(values)
    ordered = unique[rng.permutation(unique.size)]

    def rows_within(m: int) -> np.ndarray:
        """Rows held out when the first m of `ordered` are (grows with m)."""
        inside = np.isin(values, ordered[:m])
        return inside[starts] if first_document_decides else np.logical_and.reduceat(inside, starts)

    lo, hi = 1, ordered.size  # fewest documents whose rows make k held-out records
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if rows_within(mid).sum() < k else (lo, mid)
    inside = np.isin(values, ordered[:lo])
    held = np.flatnonzero(rows_within(lo))
    touched = np.logical_or.reduceat(inside, starts)
    keep = np.flatnonzero(~touched)
    if keep.size == 0 or held.size == 0:
        return None
    training_b = ~np.logical_and.reduceat(inside, starts)[held]
    return keep, held, training_b


def held_out_warning(data: Any, held: IndexView) -> str | None:
    """A warning when `split_held_out` drew `held` by row from records that may hold several
    epochs of the same text (so the held-out rows repeat training text)."""
    if held.drawn_by == "documents":
        return None
    settings = data.manifest.get("settings")
    epochs = settings.get("dupe_factor") if isinstance(settings, dict) else None
    if epochs == 1:
        return None
    why = held.drawn_by.removeprefix("rows: ")
    made = (f"with --dupe-factor {epochs}" if epochs else
            "perhaps with several epochs of the same text (Google's create_pretraining_data.py defaults to 10)")
    return (f"warning: the held-out records are drawn by row ({why}); the records were made {made}, so "
            f"held-out rows repeat text seen in training and the held-out loss is optimistic. Pass --eval-data "
            f"with records of other documents (or rebuild these with this bertkit)")


def generated_epochs(data: Any) -> np.ndarray | None:
    """int [N]: the epoch `pretrain-data --dupe-factor` generated each record of `data` (records or
    an IndexView of them) in, or None for records of one generated epoch and other formats. A
    shard holds its epochs one after another (`epoch_rows` in the manifest)."""
    records = data.data if isinstance(data, IndexView) else data
    rows = [shard.get("epoch_rows") for shard in records.manifest.get("shards") or []]
    if not rows or not all(rows) or max(len(r) for r in rows) < 2:
        return None
    epochs = np.concatenate([np.repeat(np.arange(len(r)), r) for r in rows])
    if epochs.size != len(records):
        return None
    return epochs[data.indices] if isinstance(data, IndexView) else epochs


def data_has_nsp(data: Any) -> bool:
    """Whether the records carry NSP labels. bertkit records say so in their settings; for other
    formats the first record decides (a format stores the label for every record or for none)."""
    settings = data.manifest.get("settings")
    if isinstance(settings, dict) and "nsp" in settings:
        return bool(settings["nsp"])
    return len(data) > 0 and int(data[0]["nsp_label"]) >= 0


def data_masking(data: Any) -> str:
    """How the records were built: "dynamic" (no stored masks) or "static"."""
    settings = data.manifest.get("settings")
    if isinstance(settings, dict) and settings.get("masking") in MASKING_MODES:
        return settings["masking"]
    return "static" if len(data) == 0 or data[0]["masked_positions"].size else "dynamic"


def check_vocabulary(data: Any, tokenizer: Any, source: str, model_vocab_size: int) -> None:
    """Refuse records made with another vocabulary than the model's tokenizer.

    bertkit records name their vocabulary (`vocab_hash` in the manifest); TFRecord/HDF5 do not, so
    for them every id must at least have an embedding row (up to VOCAB_SCAN_LIMIT records, evenly
    spread, are checked: a wrong vocab shows in any sample)."""
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's word embeddings "
                         f"have only {model_vocab_size} rows; give the tokenizer that belongs to the model")
    recorded = data.manifest.get("vocab_hash")
    if recorded is not None:
        if recorded != tokenizer.vocab_hash:
            made_with = data.manifest.get("tokenizer", {})
            raise DataError(
                f"{source}: the records were built with vocabulary {recorded} "
                f"({made_with.get('vocab_size', '?')} tokens) but the model's tokenizer has vocabulary "
                f"{tokenizer.vocab_hash} ({tokenizer.vocab_size} tokens); rebuild the records with "
                f"`bertkit pretrain-data --tokenizer <the model>` or pre-train the matching model")
        return
    n = len(data)
    picks = np.unique(np.linspace(0, n - 1, num=min(n, VOCAB_SCAN_LIMIT)).astype(np.int64)) if n else []
    for i in picks:
        inst = data[int(i)]
        ids = inst["input_ids"]
        top = max(int(ids.max()) if ids.size else 0,
                  int(inst["masked_ids"].max()) if inst["masked_ids"].size else 0)
        if top >= tokenizer.vocab_size:
            where = data.where(int(i)) if hasattr(data, "where") else f"record {int(i)}"
            raise DataError(
                f"{source}: {where} holds token id {top}, but the model's tokenizer has only "
                f"{tokenizer.vocab_size} tokens (vocabulary {tokenizer.vocab_hash}); the records were "
                f"made with another vocabulary: give the matching --tokenizer/--model")


def max_predictions_of(data: Any) -> int:
    """Predictions per row the collated batch must hold (the builder's cap)."""
    settings = data.manifest.get("settings")
    if builder_settings(data) is not None:
        return int(settings["mask"]["max_predictions_per_seq"])
    converted = settings.get("max_predictions") if isinstance(settings, dict) else None  # convert-records
    return int(converted or data.manifest.get("max_predictions") or 0) or 20


def builder_settings(data: Any) -> dict[str, Any] | None:
    """The settings `bertkit pretrain-data` wrote, or None for other records (converted ones have
    settings too, but only the source format and its prediction cap)."""
    settings = data.manifest.get("settings")
    return settings if isinstance(settings, dict) and isinstance(settings.get("mask"), dict) else None


def masking_description(data: Any, masking: str) -> str:
    """How the records are masked, for the run's first line: "static, MASS fragments of 50%"."""
    settings = builder_settings(data)
    if settings is None:
        return masking
    mask = settings["mask"]
    strategy = {"span": "SpanBERT spans", "mass": "MASS fragments"}.get(mask.get("strategy"), "uniform")
    if strategy == "uniform" and mask.get("whole_word_mask"):
        strategy = "whole words"
    targets = " + target words" if settings.get("target_words") else ""
    return f"{masking}, {strategy}{targets} at {mask.get('masked_lm_prob', 0.15):g}"


class PretrainingTask(Task):
    """Masked-LM (+NSP) on pre-training records. Eval metrics: held-out `mlm_loss` (mean over
    masked tokens, nats), `mlm_accuracy`, `perplexity` and, with NSP, `nsp_accuracy`."""

    head: ClassVar[str] = "pretraining"
    main_metric: ClassVar[str] = "mlm_loss"
    greater_is_better: ClassVar[bool] = False

    def __init__(self, data: Any, tokenizer: Any, masking: str | None = None, nsp: bool | None = None):
        super().__init__(TaskOptions(max_seq_length=int(data.manifest.get("max_seq_length") or 0)))
        built = data_masking(data)
        self.masking = masking or built
        if self.masking not in MASKING_MODES:
            raise ValueError(f"--masking {self.masking!r} is not one of {', '.join(MASKING_MODES)}")
        if self.masking == "static" and built == "dynamic":
            raise ValueError("--masking static: these records were built with --masking dynamic and hold no "
                             "masks; use --masking dynamic (the default for them)")
        self.nsp = data_has_nsp(data) if nsp is None else nsp
        self.pad_id = tokenizer.pad_id
        self.max_predictions = max_predictions_of(data)
        self.dynamic = self._dynamic_masking(data, tokenizer) if self.masking == "dynamic" else None
        # The trainer passes a per-batch seeded `rng` to collate only when this is set.
        self.collate_needs_rng = self.dynamic is not None
        self.generated_epoch: np.ndarray | None = None  # of each training record (training_view)

    def _dynamic_masking(self, data: Any, tokenizer: Any) -> Any:
        from bertkit.data.masking import DynamicMasking, MaskingConfig, VocabInfo
        from bertkit.data.pretraining import dynamic_masking_for

        if builder_settings(data) is not None:  # the builder's settings, target words included
            return dynamic_masking_for(data.manifest, tokenizer)
        return DynamicMasking(MaskingConfig(max_predictions_per_seq=self.max_predictions),
                              VocabInfo.from_vocab(tokenizer.vocab))

    # ---- data -----------------------------------------------------------------------------------
    def training_view(self, data: Any) -> Any:
        """The records the trainer reads: with dynamic masking, stored masks undone."""
        self.generated_epoch = generated_epochs(data)
        return Unmasked(data) if self.dynamic is not None else data

    def epoch_examples(self, epoch: int) -> np.ndarray | None:
        """The training records of training epoch `epoch`: with several epochs generated
        (`pretrain-data --dupe-factor`), those of generated epoch `epoch` (cycling through them),
        as Hugging Face's finetune_on_pregenerated.py reads them. Reading all of them every epoch
        made `--epochs 3` on 5 generated epochs 15 passes over the text. None: all records."""
        if self.generated_epoch is None:
            return None
        generations = int(self.generated_epoch.max()) + 1
        return np.flatnonzero(self.generated_epoch == epoch % generations)

    def eval_set(self, data: Any) -> tuple[list[Instance], list[Instance]] | None:
        """(examples, features) for the trainer's evaluation: the held-out records, with masks
        fixed once (drawn with a constant seed under dynamic masking) so that the loss at step 100
        and at step 1000 are measured on the same predictions."""
        if data is None or len(data) == 0:
            return None
        if self.dynamic is None:
            items = [data[i] for i in range(len(data))]
        else:
            rng = np.random.default_rng(EVAL_MASK_SEED)
            items = []
            for inst in (Unmasked(data)[i] for i in range(len(data))):
                ids, pos, orig = self.dynamic(inst["input_ids"], rng)
                items.append({**inst, "input_ids": ids, "masked_positions": pos, "masked_ids": orig})
        training_b = getattr(data, "training_segment_b", None)
        if training_b is not None:
            items = [without_segment_b_masks(inst) if seen else inst for inst, seen in zip(items, training_b)]
        return items, items

    def collate(self, features: Sequence[Instance], rng: np.random.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        """Instances -> BertForPreTraining kwargs (see `collate_pretraining`). Training batches of
        a dynamic-masking run are masked here with the trainer's `rng`; evaluation calls come
        without one and keep the masks fixed by `eval_set`."""
        dynamic = self.dynamic if rng is not None else None
        batch = collate_pretraining(features, self.pad_id, self.max_predictions, dynamic, rng)
        if not self.nsp:
            del batch["next_sentence_label"]  # no NSP loss: pooler and NSP head get no gradient
        return batch

    def feature_length(self, feature: Instance) -> int:
        return int(feature["input_ids"].size)

    def build_model(self, config) -> torch.nn.Module:
        from bertkit.modeling.heads import BertForPreTraining

        return BertForPreTraining(config)

    def model_config_updates(self) -> dict[str, Any]:
        return {}

    # ---- evaluation -----------------------------------------------------------------------------
    def gather_outputs(self, batch: dict[str, torch.Tensor], outputs: Any) -> list[np.ndarray]:
        """Per row: [mlm loss summed over its masked tokens, correct, masked tokens, nsp correct,
        nsp labelled]. `mlm_logits` [B,P,V] holds every masked-position slot; -1 slots are skipped."""
        valid = batch["masked_positions"] >= 0  # [B,P]
        targets = batch["masked_ids"][valid]  # [M]
        logits = outputs.mlm_logits[valid].float()  # [B,P,V] -> [M,V]
        token_loss = F.cross_entropy(logits, targets, reduction="none")  # [M]
        token_correct = (logits.argmax(-1) == targets).float()  # [M]
        row = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]  # [M]
        b = valid.shape[0]
        loss_sum = torch.zeros(b, device=logits.device).index_add_(0, row, token_loss)
        correct = torch.zeros(b, device=logits.device).index_add_(0, row, token_correct)
        count = valid.sum(1).float()
        nsp_correct = torch.zeros(b, device=logits.device)
        nsp_count = torch.zeros(b, device=logits.device)
        labels = batch.get("next_sentence_label")
        if labels is not None and outputs.nsp_logits is not None:
            labelled = labels >= 0
            nsp_correct = ((outputs.nsp_logits.argmax(-1) == labels) & labelled).float()
            nsp_count = labelled.float()
        stacked = torch.stack([loss_sum, correct, count, nsp_correct, nsp_count], dim=1)  # [B,5]
        return list(stacked.double().cpu().numpy())

    def postprocess(self, examples: list, features: list, outputs: list[np.ndarray]) -> list[np.ndarray]:
        return outputs

    def placeholder_predictions(self, examples: list) -> list[np.ndarray]:
        # One masked token, and one NSP label where the records have them.
        return [np.array([0.0, 0.0, 1.0, 0.0, float(self.nsp)])]

    def metrics(self, examples: list, predictions: list[np.ndarray]) -> dict[str, float]:
        loss_sum, correct, count, nsp_correct, nsp_count = np.sum(predictions, axis=0)
        if count == 0:
            raise DataError("the evaluation records hold no masked positions; nothing to measure")
        mlm_loss = float(loss_sum / count)
        out = {"mlm_loss": mlm_loss, "mlm_accuracy": float(correct / count),
               "perplexity": float(np.exp(min(mlm_loss, 50.0))), "masked_tokens": int(count),
               "records": len(predictions)}
        if nsp_count:
            out["nsp_accuracy"] = float(nsp_correct / nsp_count)
        return out
