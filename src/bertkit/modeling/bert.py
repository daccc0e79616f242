"""The BERT encoder (Devlin et al. 2019): embeddings, post-LayerNorm transformer layers, pooler.

Module and parameter names equal Hugging Face's (`embeddings.word_embeddings.weight`,
`encoder.layer.N.attention.self.query.weight`, ...), so a checkpoint loads through a plain key map
(see checkpoints.py). The layers work on any token layout: `[B, T, H]` or the unpadded `[N, H]`;
attention.py owns the one operation that needs to know which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bertkit.config import RESIDUAL_DTYPES, TANH_GELU_NAMES, ModelConfig
from bertkit.modeling.attention import (LAYOUT_BACKENDS, FlexAttention, PaddedAttention, UnpaddedAttention,
                                       attention_from_layout, keep_full_batches_padded, positions_from_mask,
                                       prepare_attention)

AttentionContext = PaddedAttention | UnpaddedAttention | FlexAttention


def activation(name: str):
    """The function for config.hidden_act: "gelu" is the exact erf GELU of the original BERT code."""
    if name == "gelu":
        return F.gelu
    if name in TANH_GELU_NAMES:
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"hidden_act={name!r} is not supported")


class BertLayerNorm(nn.LayerNorm):
    """nn.LayerNorm that, under autocast, computes in fp32 and returns `output_dtype`.

    Its output is the residual stream: the hidden states every sublayer reads and adds back to.
    Autocast alone returns fp32 from LayerNorm on CUDA but bf16 on the CPU; here both devices do
    what `output_dtype` says. fp32 (the default) is what transformers runs on CUDA. bf16
    (`--residual-dtype bf16`, as Megatron-LM does unless --fp32-residual-connection) halves the
    residual-stream tensors that the dropout + residual + LayerNorm kernels and their gradients
    read and write. Those memory-bound kernels are 17.0 of the 54.0 ms of a compiled BERT-base
    pre-training step on an H100 (GEMMs 23.9); inductor counts 16% fewer bytes per token in them
    with bf16 (benchmarks/traffic.py). The normalisation itself is always computed in fp32.
    Without autocast this is nn.LayerNorm (the dtype of input and weights rules)."""

    output_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            y = F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(self.output_dtype)


def set_residual_dtype(model: nn.Module, name: str) -> None:
    """Output dtype under autocast of every BertLayerNorm in `model` (config.RESIDUAL_DTYPES)."""
    if name not in RESIDUAL_DTYPES:
        raise ValueError(f"residual dtype {name!r} is not one of {', '.join(RESIDUAL_DTYPES)}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
    for module in model.modules():
        if isinstance(module, BertLayerNorm):
            module.output_dtype = dtype


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # [B,T,H]; zeros at padding on the unpadded path; [B,P,H] with output_positions
    pooler_output: torch.Tensor | None  # [B,H] tanh(dense(hidden of each row's first token)); None without a pooler


class BertEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, token_type_ids, position_ids [B,T] -> [B,T,H]."""
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(position_ids))
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """x [..., H] (layout of ctx) -> context vectors, same shape.

        The three projections run as one [3H, H] matmul: on the short rows of fine-tuning a step
        is bound by the number of kernels, not FLOPs, and this saves two GEMMs forward and four
        backward (plus the sum of three input gradients) per layer. The weights stay three
        modules so that checkpoints keep Hugging Face's names."""
        p = self.dropout_p if self.training else 0.0
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # [3H,H]
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # [3H]
        return ctx.attend(F.linear(x, weight, bias), self.num_heads, p)

    def attend_from(self, x: torch.Tensor, x_at_columns: torch.Tensor, columns: torch.Tensor,
                    ctx: AttentionContext) -> torch.Tensor:
        """Context vectors at `columns` [B,Q] only: queries from x_at_columns [B,Q,H] (x gathered
        there), keys and values from every token of x [..., H] (layout of ctx) -> [B,Q,H]."""
        p = self.dropout_p if self.training else 0.0
        q = F.linear(x_at_columns, self.query.weight, self.query.bias)  # [B,Q,H]
        weight = torch.cat([self.key.weight, self.value.weight])  # [2H,H]
        bias = torch.cat([self.key.bias, self.value.bias])  # [2H]
        return ctx.attend_queries(q, F.linear(x, weight, bias), columns, self.num_heads, p)


class BertSelfOutput(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, columns: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., H] (layout of ctx) -> same shape; with columns [B,Q]: the output there only, [B,Q,H]."""
        if columns is None:
            return self.output(self.self(x, ctx), x)
        residual = ctx.gather(x, columns)  # [B,Q,H]
        return self.output(self.self.attend_from(x, residual, columns, ctx), residual)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertFeedForwardOutput(nn.Module):
    """Hugging Face calls this module `BertOutput`; the name is taken here by the output dataclass."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = BertLayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertFeedForwardOutput(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, columns: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., H] (layout of ctx) -> same shape; with columns [B,Q]: the output there only, [B,Q,H]."""
        x = self.attention(x, ctx, columns)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, ctx: AttentionContext, columns: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., H] (layout of ctx) -> same shape; with columns [B,Q], the last layer computes
        its output at those columns only -> [B,Q,H]."""
        *inner, last = self.layer
        for layer in inner:
            x = layer(x, ctx)
        return last(x, ctx, columns)


class BertPooler(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B,T,H] -> [B,H] from each row's first token ([CLS])."""
        return torch.tanh(self.dense(hidden[:, 0]))


def init_bert_weights(module: nn.Module, config: ModelConfig) -> None:
    """BERT's init of `module`'s own parameters (see init_bert_parameter)."""
    for name, _ in module.named_parameters(recurse=False):
        init_bert_parameter(module, name, config.initializer_range)


def init_bert_parameter(module: nn.Module, name: str, std: float) -> None:
    """BERT's init of one parameter: weights ~ N(0, std), biases 0, LayerNorm 1/0, the [PAD] row 0.
    Per parameter, so that a loader can initialise exactly the tensors a checkpoint lacks."""
    tensor = getattr(module, name)
    with torch.no_grad():
        if isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0 if name == "weight" else 0.0)
        elif name == "bias":
            tensor.zero_()
        else:
            tensor.normal_(mean=0.0, std=std)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                tensor[module.padding_idx].zero_()


def check_input_shapes(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None,
                       output_positions: torch.Tensor | None) -> None:
    """Clear errors for inputs of the wrong shape (shapes only: no device sync). Broadcasting would
    otherwise accept a mask of another batch size and duplicate rows without a word."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, tokens] with at least one token, got shape "
                         f"{list(input_ids.shape)} (a single sequence: input_ids[None])")
    B, T = input_ids.shape
    for name, tensor, rows in (("attention_mask", attention_mask, (B,)), ("token_type_ids", token_type_ids, (1, B)),
                               ("position_ids", position_ids, (1, B))):
        if tensor is not None and (tensor.dim() != 2 or tensor.shape[1] != T or tensor.shape[0] not in rows):
            allowed = f"[{B}, {T}]" + (f" or [1, {T}]" if 1 in rows and B != 1 else "")
            raise ValueError(f"{name} has shape {list(tensor.shape)} but input_ids has {list(input_ids.shape)}; "
                             f"expected {allowed}")
    if output_positions is not None and (output_positions.dim() != 2
                                         or output_positions.shape[0] != input_ids.shape[0]):
        raise ValueError(f"output_positions must be [batch, P] with batch {input_ids.shape[0]}, got shape "
                         f"{list(output_positions.shape)}")


class BertModel(nn.Module):
    """The encoder. `attn_backend` picks the attention path (see attention.prepare_attention)."""

    def __init__(self, config: ModelConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.attn_backend = "auto"
        self.apply(lambda m: init_bert_weights(m, config))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                unpad_indices: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                full_rows: bool = False, output_positions: torch.Tensor | None = None,
                **unused: Any) -> BertOutput:
        """input_ids [B,T]; attention_mask [B,T] (0 = pad, k > 0 = sequence id, None = all 1);
        token_type_ids [B,T] (None = 0); position_ids [B,T] (None = restart at 0 per sequence id);
        unpad_indices, cu_seqlens, full_rows: the batch's `attention.unpadding_layout`, when the
        collate computed it (then no host sync is needed to choose and build the layout).

        output_positions [B,P] (column indices of real tokens): the caller needs the final hidden
        states there only, and last_hidden_state is [B,P,H] at those columns ([B,0] when only the
        pooler is needed). The last layer then computes its output only there (and at [CLS] for
        the pooler), with keys and values from every token: the same numbers, for a fraction of
        the layer. Pre-training at 128 tokens reads 19 masked columns and [CLS]: 84% of the last
        layer's query, output and feed-forward matmuls are skipped, 5.8% of BERT-base's encoder
        matmul FLOPs; inductor counts 5.7% fewer fused-kernel bytes per token (benchmarks/traffic.py)."""
        if unused:
            raise TypeError(f"BertModel.forward got unexpected arguments: {', '.join(sorted(unused))}")
        check_input_shapes(input_ids, attention_mask, token_type_ids, position_ids, output_positions)
        if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            self._check_value_ranges(input_ids, token_type_ids, output_positions)
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"input_ids has {T} tokens per row but the model has only "
                             f"max_position_embeddings={self.config.max_position_embeddings}; "
                             f"lower --max-seq-length")
        if full_rows:
            attention_mask = None  # every row is one sequence without padding: attend everywhere
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = (torch.arange(T, device=input_ids.device).expand(B, T) if attention_mask is None
                            else positions_from_mask(attention_mask))
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # [B,T,H]
        # A layout from the collate serves the unpadded backends; "padded" and "flex" ignore it.
        if attention_mask is None:  # no padding, one sequence per row (prepare_attention would break the graph)
            ctx = PaddedAttention(mask=None)
        elif unpad_indices is not None and cu_seqlens is not None and self.attn_backend in LAYOUT_BACKENDS:
            ctx = attention_from_layout(attention_mask, unpad_indices, cu_seqlens, self.attn_backend,
                                        self._padded_if_full())
        else:
            ctx = prepare_attention(attention_mask, self.attn_backend, self._padded_if_full())
        if output_positions is None:
            x = ctx.pad(self.encoder(ctx.unpad(x), ctx))  # [B,T,H] -> [N,H] (if unpadded) -> [B,T,H]
            pooled = self.pooler(x) if self.pooler is not None else None
            return BertOutput(last_hidden_state=x, pooler_output=pooled)
        columns = output_positions.long()  # [B,P]
        if self.pooler is not None:  # [CLS] first: the pooler reads column 0 of what comes back
            columns = torch.cat([columns.new_zeros(B, 1), columns], dim=1)  # [B,1+P]
        x = self.encoder(ctx.unpad(x), ctx, columns)  # [B,T,H] -> [N,H] (if unpadded) -> [B,Q,H]
        if self.pooler is None:
            return BertOutput(last_hidden_state=x, pooler_output=None)
        return BertOutput(last_hidden_state=x[:, 1:], pooler_output=self.pooler(x))

    def _check_value_ranges(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                            output_positions: torch.Tensor | None) -> None:
        """Values outside what they index would fail as a bare IndexError (ids outside the embedding
        tables) or, for output_positions on the unpadded path, gather another row's token. Checked
        on the CPU only: on CUDA reading the values costs a sync per step, and there batches come
        checked from the records, the tokenizer and the collate."""
        vocab, types, T = self.config.vocab_size, self.config.type_vocab_size, input_ids.shape[1]
        for values, size, message in (
                (input_ids, vocab, f"input_ids holds {{}}, outside the model's {vocab} embeddings (0..{vocab - 1}); "
                                   f"was the text tokenized with another vocabulary?"),
                (token_type_ids, types, f"token_type_ids holds {{}}, outside the model's {types} embeddings "
                                        f"(0..{types - 1}); segment ids are 0 (first) and 1 (second)"),
                (output_positions, T, f"output_positions holds column {{}}, outside the {T} columns of input_ids")):
            if values is not None and values.numel():
                low, high = int(values.min()), int(values.max())
                if low < 0 or high >= size:
                    raise ValueError(message.format(low if low < 0 else high))

    def _padded_if_full(self) -> bool:
        """attention.keep_full_batches_padded for this call (the compute dtype is autocast's, if
        on; attention dropout only counts in training)."""
        weight = self.embeddings.word_embeddings.weight
        device = weight.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        dropout_p = self.encoder.layer[0].attention.self.dropout_p if self.training else 0.0
        return keep_full_batches_padded(self.attn_backend, device, dtype, dropout_p)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, **config_overrides: Any) -> "BertModel":
        """Load a HF directory, hub id or Google TF checkpoint (see checkpoints.load_pretrained)."""
        from bertkit.modeling.checkpoints import load_pretrained

        return load_pretrained(cls, path_or_hub_id, **config_overrides)

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, weights: bool = True) -> Path:
        from bertkit.modeling.checkpoints import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer, weights=weights)
