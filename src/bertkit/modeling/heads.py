"""Task heads on top of `BertModel`, with Hugging Face's module names (`bert`, `cls`, `classifier`,
`qa_outputs`) so that `save_pretrained` output loads in `transformers.AutoModelFor<Head>` and back.

| head name (Task.head)                  | class                          |
|----------------------------------------|--------------------------------|
| pretraining                            | BertForPreTraining (MLM + NSP) |
| masked_lm                              | BertForMaskedLM                |
| sequence_classification, regression,   | BertForSequenceClassification  |
| multi_label_classification             |                                |
| token_classification                   | BertForTokenClassification     |
| question_answering                     | BertForQuestionAnswering       |
| multiple_choice                        | BertForMultipleChoice          |
| polyphone                              | BertForPolyphone               |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertkit.config import ModelConfig
from bertkit.modeling.bert import BertLayerNorm, BertModel, activation, init_bert_weights

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """What every head returns; fields a head does not produce stay None."""

    loss: torch.Tensor | None = None  # scalar; None when no labels were given
    logits: torch.Tensor | None = None  # [B,C] or [B,T,C]
    start_logits: torch.Tensor | None = None  # [B,T] (question answering)
    end_logits: torch.Tensor | None = None  # [B,T]
    mlm_loss: torch.Tensor | None = None  # scalar (pre-training)
    nsp_loss: torch.Tensor | None = None  # scalar
    mlm_logits: torch.Tensor | None = None  # [B,P,V] at the masked-position slots, or [B,T,V]
    nsp_logits: torch.Tensor | None = None  # [B,2]
    # [n_terms] fp32: each loss term summed over its labels (not averaged), for heads whose loss is a
    # mean over a count the batch decides (masked tokens, labelled tokens, class weights); see
    # BertPreTrainedModel.loss_weights.
    loss_sums: torch.Tensor | None = None


class BertPreTrainedModel(nn.Module):
    """Base of the head models: BERT init, tied embeddings, HF-format load and save."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def init_weights(self) -> None:
        """BERT's init of the head modules, then the tie. The encoder (`bert`) initialised itself:
        drawing its weights again cost BERT-base another second on a CPU."""
        for name, child in self.named_children():
            if name != "bert":
                child.apply(lambda m: init_bert_weights(m, self.config))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the MLM decoder matrix with the word embeddings (BERT ties them; HF saves one copy),
        unless the config says `tie_word_embeddings: false` (then both are loaded and saved)."""
        cls = getattr(self, "cls", None)
        if cls is not None and self.config.tie_word_embeddings:
            cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @property
    def attn_backend(self) -> str:
        return self.bert.attn_backend

    @attn_backend.setter
    def attn_backend(self, value: str) -> None:
        self.bert.attn_backend = value

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, new_head_on_mismatch: bool = False,
                        require_head: bool = False, **config_overrides: Any):
        """Load a HF directory, hub id or Google TF checkpoint; new head weights are initialised
        (and logged), or with require_head missing head weights are an error (evaluation).
        config_overrides replace config.json fields, e.g. num_labels=3."""
        from bertkit.modeling.checkpoints import load_pretrained

        return load_pretrained(cls, path_or_hub_id, new_head_on_mismatch=new_head_on_mismatch,
                               require_head=require_head, **config_overrides)

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, weights: bool = True) -> Path:
        """Write config.json + model.safetensors (+ tokenizer files) in Hugging Face format."""
        from bertkit.modeling.checkpoints import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer, weights=weights)

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[n_terms]: what each term of `loss_sums` is divided by to give this batch's mean loss,
        computed from the labels alone (no forward pass). The trainer adds them up over the
        micro-batches and processes of an optimizer step and divides the summed losses by the totals,
        so that a step's loss is the mean over all its masked or labelled tokens however the global
        batch is split. None (this default): the loss is a plain mean over the batch's examples, and
        weighting each micro-batch by its share of the examples is already exact."""
        return None


def _dropout(config: ModelConfig) -> nn.Dropout:
    p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(p)


def _label_weights(labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 weight of each label in a cross-entropy mean: 0 where no label is given (negative, such
    as -100), else 1 or the label's class weight."""
    given = labels >= 0
    if class_weights is None:
        return given.float()
    return class_weights.float()[labels.long().clamp(min=0)] * given


def _cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor,
                       class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted sum of the CE over given labels, sum of their weights); logits [M,C], labels [M]."""
    weights = _label_weights(labels, class_weights)  # [M]
    labels = labels.long().masked_fill(labels < 0, IGNORE_INDEX)
    per_token = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")  # [M]
    return (per_token * weights).sum(), weights.sum()


def _mean(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # Sum / weight total instead of reduction="mean", so an all-ignored batch gives 0 without asking
    # the host whether any label exists (a sync per step, and a graph break under torch.compile).
    return total / weight.clamp(min=torch.finfo(torch.float32).tiny)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CE over labels != -100 (negative labels also count as "none"); logits [M,C], labels [M].
    Returns 0 (still attached to the graph) when no label is given, instead of NaN. Runs in fp32."""
    return _mean(*_cross_entropy_sum(logits, labels, class_weights))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # tied to word embeddings
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))  # HF: cls.predictions.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., H] -> vocabulary logits [..., V].

        The bias goes into the matmul (as in transformers, whose decoder.bias is this tensor): added
        afterwards, a bf16 product plus the fp32 bias would promote the [M, V] logits to fp32,
        twice the bytes of the largest activation of a pre-training step."""
        return F.linear(self.transform(x), self.decoder.weight, self.bias)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def pooled_output(bert: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                  **layout: torch.Tensor) -> torch.Tensor:
    """bert's pooled [CLS] vector [B,H] for input_ids [B,T], with the last layer computing [CLS]
    alone (output_positions [B,0]): the heads that read only the pooler call this."""
    only_pooler = input_ids.new_zeros(input_ids.shape[0], 0)
    return bert(input_ids, attention_mask, token_type_ids, position_ids, output_positions=only_pooler,
                **layout).pooler_output


def _output_positions(masked_positions: torch.Tensor | None) -> torch.Tensor | None:
    """The columns whose final hidden states the MLM head reads: masked_positions [B,P] with the
    unused slots (-1) at column 0 ([CLS], which every row has)."""
    return masked_positions.clamp(min=0) if masked_positions is not None else None


def _mlm_targets(masked_positions: torch.Tensor | None, masked_ids: torch.Tensor | None,
                 labels: torch.Tensor | None) -> torch.Tensor | None:
    """The MLM labels, flat, negative where nothing is predicted: masked_ids at the used
    masked_positions slots [B*P], or HF-style labels [B*T]; None without either."""
    if masked_positions is not None:
        if masked_ids is None:
            return None
        return masked_ids.long().masked_fill(masked_positions < 0, IGNORE_INDEX).flatten()
    return labels.flatten() if labels is not None else None


def _mlm(predictions: BertLMPredictionHead, hidden: torch.Tensor, masked_positions: torch.Tensor | None,
         masked_ids: torch.Tensor | None, labels: torch.Tensor | None
         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """MLM logits and loss. With masked_positions [B,P] (-1 = none), `hidden` [B,P,H] holds the
    final states at the masked slots (the encoder computed only those: `_output_positions`) and the
    decoder runs only on them -> logits [B,P,V] (slots at -1 read column 0 and are left out of the
    loss): the vocabulary projection is most of the pre-training compute (V=30522 vs H=768), and
    only ~15% of tokens are masked. The slots have a fixed count, unlike the valid positions, so the
    step needs no host sync and keeps one shape for torch.compile and CUDA graphs. Without
    masked_positions: hidden [B,T,H], logits [B,T,V] and HF-style labels [B,T] (-100 = not masked).
    The loss comes as (sum, count) of the CE over the predicted tokens, None without labels."""
    logits = predictions(hidden)  # [B,P,H] -> [B,P,V], or [B,T,H] -> [B,T,V]
    targets = _mlm_targets(masked_positions, masked_ids, labels)
    return logits, (_cross_entropy_sum(logits.flatten(0, 1), targets) if targets is not None else None)


def _no_loss(reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of a loss term the batch has no labels for."""
    zero = reference.new_zeros((), dtype=torch.float32)
    return zero, zero


class BertForPreTraining(BertPreTrainedModel):
    """Masked-LM + next-sentence prediction (the original BERT objective)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                masked_positions: torch.Tensor | None = None, masked_ids: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                        output_positions=_output_positions(masked_positions), **layout)
        mlm_logits, mlm = _mlm(self.cls.predictions, out.last_hidden_state, masked_positions, masked_ids, labels)
        nsp_logits = self.cls.seq_relationship(out.pooler_output)  # [B,2]
        nsp = _cross_entropy_sum(nsp_logits, next_sentence_label) if next_sentence_label is not None else None
        mlm_loss, nsp_loss = (_mean(*term) if term is not None else None for term in (mlm, nsp))
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses) if losses else None
        sums = (torch.stack([(term if term is not None else _no_loss(nsp_logits))[0] for term in (mlm, nsp)])
                if losses else None)
        return ModelOutput(loss=loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss, mlm_logits=mlm_logits,
                           nsp_logits=nsp_logits, logits=mlm_logits, loss_sums=sums)

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[predicted tokens, NSP labels]: the MLM loss is a mean over masked tokens."""
        mlm = _mlm_targets(batch.get("masked_positions"), batch.get("masked_ids"), batch.get("labels"))
        nsp = batch.get("next_sentence_label")
        none = batch["input_ids"].new_zeros((), dtype=torch.float32)
        return torch.stack([_label_weights(t).sum() if t is not None else none for t in (mlm, nsp)])


class BertForMaskedLM(BertPreTrainedModel):
    """Masked-LM only: continued pre-training of checkpoints saved without an NSP head."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                masked_positions: torch.Tensor | None = None, masked_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, next_sentence_label: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        # next_sentence_label is accepted (and ignored) so pre-training batches with NSP labels run.
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                        output_positions=_output_positions(masked_positions), **layout)
        mlm_logits, mlm = _mlm(self.cls.predictions, out.last_hidden_state, masked_positions, masked_ids, labels)
        mlm_loss = _mean(*mlm) if mlm is not None else None
        return ModelOutput(loss=mlm_loss, mlm_loss=mlm_loss, mlm_logits=mlm_logits, logits=mlm_logits,
                           loss_sums=mlm[0][None] if mlm is not None else None)

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[predicted tokens]: the MLM loss is a mean over masked tokens."""
        targets = _mlm_targets(batch.get("masked_positions"), batch.get("masked_ids"), batch.get("labels"))
        return _label_weights(targets).sum()[None] if targets is not None else None


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> Linear(H, num_labels). The loss follows config.problem_type:
    "regression" (MSE on logits[:, 0]; also when problem_type is None and num_labels == 1),
    "single_label_classification" (CE, optional class weights), "multi_label_classification" (BCE)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        pooled = pooled_output(self.bert, input_ids, attention_mask, token_type_ids, position_ids, **layout)
        logits = self.classifier(self.dropout(pooled))  # [B,C]
        loss = None
        if labels is not None:
            problem = self.config.problem_type or ("regression" if self.num_labels == 1
                                                   else "single_label_classification")
            if problem == "regression":
                loss = F.mse_loss(logits[:, 0].float(), labels.float().view(-1))
            elif problem == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                total, weight = _cross_entropy_sum(logits, labels.view(-1), class_weights)
                return ModelOutput(loss=_mean(total, weight), logits=logits, loss_sums=total[None])
        return ModelOutput(loss=loss, logits=logits)

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[class-weight total] for a class-weighted cross entropy (a mean weighted by the labels'
        classes); None for every other loss (a plain mean over examples)."""
        problem = self.config.problem_type or ("regression" if self.num_labels == 1 else "single_label_classification")
        if problem != "single_label_classification" or batch.get("class_weights") is None or "labels" not in batch:
            return None
        return _label_weights(batch["labels"].view(-1), batch["class_weights"]).sum()[None]


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        """labels [B,T] with -100 at tokens that carry no label -> logits [B,T,C]."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids, position_ids, **layout).last_hidden_state
        logits = self.classifier(self.dropout(hidden))  # [B,T,C]
        if labels is None:
            return ModelOutput(logits=logits)
        total, weight = _cross_entropy_sum(logits.flatten(0, 1), labels.flatten(), class_weights)  # [B*T,C]
        return ModelOutput(loss=_mean(total, weight), logits=logits, loss_sums=total[None])

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[labelled tokens] (their class-weight total with class weights): the loss is a mean over
        tokens, and sentences have different numbers of them."""
        if "labels" not in batch:
            return None
        return _label_weights(batch["labels"].flatten(), batch.get("class_weights")).sum()[None]


class BertForQuestionAnswering(BertPreTrainedModel):
    fixed_num_labels = 2  # transformers sizes qa_outputs from config.num_labels

    def __init__(self, config: ModelConfig):
        if config.num_labels != self.fixed_num_labels or config.id2label is not None:
            config = config.replace(num_labels=self.fixed_num_labels, id2label=None, problem_type=None)
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, self.fixed_num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        """-> start_logits, end_logits [B,T]; loss = mean of the start and end CE. Positions outside
        the row (e.g. a span cut off by truncation) are ignored, as in the original run_squad.py."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids, position_ids, **layout).last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).unbind(dim=-1)  # [B,T,2] -> 2 x [B,T]
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start_logits.shape[1]
            starts = start_positions.long().masked_fill((start_positions < 0) | (start_positions >= T), IGNORE_INDEX)
            ends = end_positions.long().masked_fill((end_positions < 0) | (end_positions >= T), IGNORE_INDEX)
            loss = (_cross_entropy(start_logits, starts) + _cross_entropy(end_logits, ends)) / 2
        return ModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


class BertForMultipleChoice(BertPreTrainedModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **layout: torch.Tensor) -> ModelOutput:
        """input_ids etc. [B,C,T] (C choices) -> logits [B,C]. A collate layout describes the
        flattened [B*C,T] rows."""
        B, C, T = input_ids.shape
        flat = [t.reshape(B * C, T) if t is not None else None  # [B,C,T] -> [B*C,T]
                for t in (input_ids, attention_mask, token_type_ids, position_ids)]
        pooled = pooled_output(self.bert, *flat, **layout)  # [B*C,H]
        logits = self.classifier(self.dropout(pooled)).view(B, C)  # [B*C,1] -> [B,C]
        loss = _cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits)


class BertForPolyphone(BertPreTrainedModel):
    """Polyphone disambiguation: classify the pronunciation of the character at target_positions.

    Not a Hugging Face class: saved with architectures ["BertForPolyphone"]; its `bert.*` weights
    still load as a transformers BertModel. Non-candidate pronunciations (candidate_mask False)
    get logit -1e4 (not -inf, so that fp16 stays finite and a row with no candidates gives no NaN)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = _dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                target_positions: torch.Tensor | None = None, candidate_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                **layout: torch.Tensor) -> ModelOutput:
        """target_positions [B] (token index of the polyphonic character), candidate_mask [B,C] bool
        -> logits [B,C]."""
        if target_positions is None:
            raise ValueError("BertForPolyphone needs target_positions [B]: the token index of each "
                             "row's polyphonic character")
        target = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                           output_positions=target_positions.long()[:, None], **layout).last_hidden_state[:, 0]  # [B,H]
        logits = self.classifier(self.dropout(target))  # [B,C]
        if candidate_mask is not None:
            logits = logits.masked_fill(~candidate_mask.bool(), -1e4)
        if labels is None:
            return ModelOutput(logits=logits)
        total, weight = _cross_entropy_sum(logits, labels, class_weights)
        return ModelOutput(loss=_mean(total, weight), logits=logits, loss_sums=total[None])

    def loss_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[labelled rows] (their class-weight total with `--class-weights`): rows whose character
        cannot be predicted carry no label (-100), so the loss is not a plain mean over rows."""
        if "labels" not in batch:
            return None
        return _label_weights(batch["labels"], batch.get("class_weights")).sum()[None]


HEADS: dict[str, type[BertPreTrainedModel]] = {
    "pretraining": BertForPreTraining,
    "masked_lm": BertForMaskedLM,
    "sequence_classification": BertForSequenceClassification,
    "regression": BertForSequenceClassification,
    "multi_label_classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
    "question_answering": BertForQuestionAnswering,
    "multiple_choice": BertForMultipleChoice,
    "polyphone": BertForPolyphone,
}


def model_class_for_head(name: str) -> type[BertPreTrainedModel]:
    """The model class for a Task.head name."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; valid: {', '.join(HEADS)}") from None
