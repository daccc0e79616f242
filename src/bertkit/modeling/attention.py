"""Attention over padded or unpadded batches.

Every encoder layer applies its Linear and LayerNorm modules to whatever token layout it is given:
`[B, T, H]` on the padded path or `[N, H]` (only the real tokens) on the unpadded path. Only the
attention product itself needs to know the layout, so it lives behind one small interface:

    ctx = prepare_attention(attention_mask, backend)   # once per forward
    x = ctx.unpad(x)                                   # [B,T,H] -> layout of ctx
    out = ctx.attend(qkv, num_heads, dropout_p)        # qkv [..., 3H] (one fused projection), out [..., H]
    x = ctx.pad(x)                                     # back to [B,T,H], zeros at pads

The last layer may need its output at a few columns only (the masked tokens and [CLS] in
pre-training, [CLS] alone for sequence classification). For it, two more operations:

    xq = ctx.gather(x, columns)                        # columns [B,Q] -> [B,Q,H]
    out = ctx.attend_queries(q, kv, columns, num_heads, dropout_p)   # q [B,Q,H], kv [..., 2H] -> [B,Q,H]

`attention_mask` follows docs/INTERFACES.md: 0 = padding, a positive integer = a sequence id; a
token attends only to tokens of its own row with the same id. Ids must form contiguous runs within
a row (packed documents 1, 1, 1, 2, 2, 0, 0), which is what the collators produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "padded", "unpadded", "varlen", "varlen_dropout", "sdpa_unpadded", "flex")
# Those that run on a precomputed layout.
LAYOUT_BACKENDS = ("auto", "unpadded", "varlen", "varlen_dropout", "sdpa_unpadded")
# Share of a batch's row slots holding real tokens at and above which "auto" keeps the padded
# layout when the unpadded one would re-pad q/k/v in every layer (see `repads_per_layer`). The
# re-padding is a scatter and a gather per layer, over the whole [B,T] layout; unpadding saves the
# padding's share of the matmuls. Inductor's byte counts for a BERT-base pre-training step (bf16,
# benchmarks/traffic.py's method, batch 16 at seq 128): the padded path moves 4.75 GB in fused
# kernels at any fill; the unpadded path 4.30, 5.00 and 5.38 GB at fills 0.58, 0.81 and 0.93, i.e.
# 2.52 GB fixed plus 1.38x the padded path's bytes per row slot for each real token. At the H100's
# measured rates (elementwise ~3 TB/s, matmuls 22.6 ms per 256-row step) the two cross near 0.88:
# real Wikipedia NSP records (fill ~0.91) and packed MLM rows (~1.0) are faster padded, fine-tuning
# batches (SST-2 ~0.1-0.3) far faster unpadded. On the CPU the matmuls dominate instead: at fill
# 0.91 unpadding was 4-8% faster (mini and small shapes, best of 10-20 alternated steps), so the
# rule applies on CUDA only (`keep_full_batches_padded`).
REPAD_FILL = 0.9


def _kernel_of(backend: str) -> str:
    """The UnpaddedAttention kernel for an unpadded backend name."""
    return backend if backend in ("sdpa_unpadded", "varlen_dropout") else "varlen"


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., H] -> [..., heads, head_dim]."""
    return x.view(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def _gather_columns(x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """x [B,T,H], columns [B,Q] -> [B,Q,H]: each row's tokens at its columns."""
    return x.gather(1, columns[..., None].expand(*columns.shape, x.shape[-1]))


def _attend_queries(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None, num_heads: int,
                    dropout_p: float) -> torch.Tensor:
    """q [B,Q,H], kv [B,T,2H] (key, value side by side), mask bool broadcastable to [B,1,Q,T] or
    None -> [B,Q,H]."""
    B, Q, H = q.shape
    k, v = (_split_heads(t, num_heads).transpose(1, 2) for t in kv.chunk(2, dim=-1))  # [B,heads,T,D]
    q = _split_heads(q, num_heads).transpose(1, 2)  # [B,heads,Q,D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(B, Q, H)  # [B,heads,Q,D] -> [B,Q,H]


@dataclass
class PaddedAttention:
    """Attention on the `[B, T, H]` layout with SDPA and a boolean mask (None = attend everywhere)."""

    mask: torch.Tensor | None  # bool, [B,1,1,T] (key padding) or [B,1,T,T] (same sequence id)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def attend(self, qkv: torch.Tensor, num_heads: int, dropout_p: float) -> torch.Tensor:
        """qkv [B,T,3H] (query, key, value side by side) -> [B,T,H]."""
        B, T, H = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = (_split_heads(t, num_heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B,heads,T,D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=dropout_p)
        return out.transpose(1, 2).reshape(B, T, H)  # [B,heads,T,D] -> [B,T,H]

    def gather(self, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """x [B,T,H], columns [B,Q] -> [B,Q,H]."""
        return _gather_columns(x, columns)

    def attend_queries(self, q: torch.Tensor, kv: torch.Tensor, columns: torch.Tensor, num_heads: int,
                       dropout_p: float) -> torch.Tensor:
        """q [B,Q,H] (the queries at `columns` [B,Q]), kv [B,T,2H] -> [B,Q,H]."""
        mask = self.mask
        if mask is not None and mask.shape[2] > 1:  # [B,1,T,T] (same sequence id): the asked-for query rows
            mask = mask.gather(2, columns[:, None, :, None].expand(-1, 1, -1, mask.shape[3]))  # [B,1,Q,T]
        return _attend_queries(q, kv, mask, num_heads, dropout_p)


def repads_per_layer(backend: str, device_type: str, dtype: torch.dtype, dropout_p: float) -> bool:
    """Whether the unpadded path of `backend` re-pads q/k/v to [B,T] for attention in every layer
    (the "sdpa_unpadded" kernel), for a call on this device, compute dtype and attention dropout."""
    kernel = _kernel_of(backend)
    return kernel == "sdpa_unpadded" or unpadded_kernel(device_type, dtype, dropout_p,
                                                        kernel == "varlen_dropout") == "sdpa_unpadded"


def keep_full_batches_padded(backend: str, device_type: str, dtype: torch.dtype, dropout_p: float) -> bool:
    """Whether "auto" should keep batches at least REPAD_FILL full padded for this call: on CUDA,
    where the unpadded path's per-layer re-padding is memory traffic the padding does not repay."""
    return device_type == "cuda" and repads_per_layer(backend, device_type, dtype, dropout_p)


def unpadded_kernel(device_type: str, dtype: torch.dtype, dropout_p: float, dropout_kernel: bool = False) -> str:
    """The attention kernel of the unpadded path for one call.

    "varlen": a flash kernel on the packed tokens. It only exists on CUDA and takes 16-bit inputs
    only. Without attention dropout it is torch.nn.attention.varlen.varlen_attn (measured on an
    H100: 1.15 ms vs 2.61 ms for padded SDPA per fwd+bwd at SST-2 lengths, shared/GPU-NOTES.md);
    with dropout it is `flash_varlen.varlen_attention`, the same flash kernel called with its
    dropout argument, taken only when `dropout_kernel` is set (backend "varlen_dropout"): on an H100
    it trained SST-2 batches slower than "sdpa_unpadded" (651.7 vs 667.1 samples/s eager, 2,263 vs
    2,518 under CUDA graphs), so "auto" does not pick it.
    "sdpa_unpadded": dense layers still run on the packed tokens, but each attention call scatters
    q/k/v back to the batch's [B,T] layout and runs SDPA with the padding mask and dropout_p: exact
    BERT semantics (attention dropout 0.1) on every device and dtype.
    """
    if device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) and (dropout_p == 0.0 or dropout_kernel):
        return "varlen"
    return "sdpa_unpadded"


@dataclass
class UnpaddedAttention:
    """Attention on the `[N, H]` layout: the N real tokens of the batch, row after row.

    Sequences are the runs of equal non-zero ids in each row, so a packed row contributes one
    sequence per document; `cu_seqlens[s]` is where sequence s starts in the N tokens.
    """

    indices: torch.Tensor  # int64 [N]: flat index (row * T + column) of each real token
    cu_seqlens: torch.Tensor  # int32 [S+1]: sequence boundaries in the N tokens
    max_seqlen: int  # an upper bound on the longest sequence: T, known from the shape (no host sync)
    batch_size: int
    seq_len: int
    kernel: str  # "varlen" (flash when unpadded_kernel allows it), "varlen_dropout" or "sdpa_unpadded"
    mask: torch.Tensor  # bool [B,1,1,T] or [B,1,T,T]: the SDPA mask of the re-padded fallback
    valid: torch.Tensor | None = None  # bool [N]: False at filler tokens (see unpadding_layout)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B,T,H] -> [N,H]."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.indices)  # [B*T,H] -> [N,H]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N,...] -> [B,T,...] with zeros at padding."""
        if self.valid is not None:  # filler tokens sit at padding positions; padding reads as zeros
            x = x.masked_fill(~self.valid.view(-1, *[1] * (x.dim() - 1)), 0)
        out = x.new_zeros(self.batch_size * self.seq_len, *x.shape[1:])
        out = out.index_copy(0, self.indices, x)
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])  # [B*T,...] -> [B,T,...]

    def attend(self, qkv: torch.Tensor, num_heads: int, dropout_p: float) -> torch.Tensor:
        """qkv [N,3H] -> [N,H]."""
        N, H = qkv.shape[0], qkv.shape[1] // 3
        with_dropout = self.kernel == "varlen_dropout"
        if (self.kernel in ("varlen", "varlen_dropout")
                and unpadded_kernel(qkv.device.type, qkv.dtype, dropout_p, with_dropout) == "varlen"):
            q, k, v = (_split_heads(t, num_heads) for t in qkv.chunk(3, dim=-1))  # [N,heads,D] views
            if dropout_p > 0.0:
                from bertkit.modeling.flash_varlen import varlen_attention

                out = varlen_attention(q, k, v, self.cu_seqlens, self.max_seqlen, dropout_p)
            else:
                from torch.nn.attention.varlen import varlen_attn

                out = varlen_attn(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen)
            return out.reshape(N, H)  # [N,heads,D] -> [N,H]
        # Re-pad to the batch's own [B,T] layout: T is the longest row, so no per-sequence max is
        # needed on the host, and q/k/v travel in one scatter.
        out = PaddedAttention(mask=self.mask).attend(self.pad(qkv), num_heads, dropout_p)  # [B,T,3H] -> [B,T,H]
        return self.unpad(out)  # [B,T,H] -> [N,H]

    def gather(self, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """x [N,H] -> [B,Q,H]: the tokens at `columns` [B,Q] of each row (a padding column reads
        some token of the batch: callers ask for real tokens)."""
        B, Q = columns.shape
        rows = torch.arange(B, device=columns.device)[:, None]  # [B,1]
        flat = (rows * self.seq_len + columns).reshape(-1)  # [B*Q] flat row * T + column
        token_of = torch.zeros(self.batch_size * self.seq_len, dtype=torch.long, device=x.device)
        token_of = token_of.index_copy(0, self.indices, torch.arange(x.shape[0], device=x.device))  # [B*T]
        return x.index_select(0, token_of[flat]).view(B, Q, x.shape[-1])  # [B*Q,H] -> [B,Q,H]

    def attend_queries(self, q: torch.Tensor, kv: torch.Tensor, columns: torch.Tensor, num_heads: int,
                       dropout_p: float) -> torch.Tensor:
        """q [B,Q,H] (the queries at `columns` [B,Q]), kv [N,2H] -> [B,Q,H]. Keys and values are
        re-padded to [B,T] for SDPA: one layer, Q queries per row, instead of a varlen call with
        per-sequence query counts that the collate would have to compute."""
        return PaddedAttention(mask=self.mask).attend_queries(q, self.pad(kv), columns, num_heads, dropout_p)


@dataclass
class FlexAttention:
    """Attention on the `[B, T, H]` layout with FlexAttention and a document block mask: blocks of
    the score matrix with no same-id pair are skipped, which is where packed rows save compute
    (torch.compile the model for the fused kernel; eager mode is a slow reference)."""

    ids: torch.Tensor  # [B,T] sequence ids (0 = pad)
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def attend(self, qkv: torch.Tensor, num_heads: int, dropout_p: float) -> torch.Tensor:
        """qkv [B,T,3H] -> [B,T,H]."""
        if dropout_p > 0.0:
            # flex_attention has no dropout; training with attention dropout uses SDPA with the
            # equivalent dense mask so that the regularisation is the same on every path.
            same = self.ids[:, :, None] == self.ids[:, None, :]  # [B,T,T]
            return PaddedAttention(mask=same[:, None]).attend(qkv, num_heads, dropout_p)
        from torch.nn.attention.flex_attention import flex_attention

        B, T, H = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        q, k, v = (_split_heads(t, num_heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B,heads,T,D]
        out = flex_attention(q, k, v, block_mask=self.block_mask)
        return out.transpose(1, 2).reshape(B, T, H)  # [B,heads,T,D] -> [B,T,H]

    def gather(self, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """x [B,T,H], columns [B,Q] -> [B,Q,H]."""
        return _gather_columns(x, columns)

    def attend_queries(self, q: torch.Tensor, kv: torch.Tensor, columns: torch.Tensor, num_heads: int,
                       dropout_p: float) -> torch.Tensor:
        """q [B,Q,H] (the queries at `columns` [B,Q]), kv [B,T,2H] -> [B,Q,H], with SDPA: a block
        mask for Q queries would cost more to build than the one small product it would serve."""
        same = self.ids.gather(1, columns)[:, :, None] == self.ids[:, None, :]  # [B,Q,T]
        return _attend_queries(q, kv, same[:, None], num_heads, dropout_p)


def _flex_context(mask: torch.Tensor) -> FlexAttention:
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sequence(b, h, q_idx, kv_idx):  # padding (id 0) attends to padding: no empty rows
        return mask[b, q_idx] == mask[b, kv_idx]

    B, T = mask.shape
    block_mask = create_block_mask(same_sequence, B, None, T, T, device=mask.device)
    return FlexAttention(ids=mask, block_mask=block_mask)


def sequence_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """bool [B,T]: True at the first token of each sequence, a non-zero id that differs from the
    last non-zero id before it. Zeros (padding, or tokens masked out in mid-row, as a Hugging Face
    mask may have) neither start nor end a sequence: [1, 1, 0, 1] is one sequence of three tokens
    at positions 0, 1, 3, as in transformers."""
    column = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    real = attention_mask != 0
    last_real = torch.where(real, column, torch.full_like(column, -1)).cummax(dim=1).values
    before = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], dim=1)
    id_before = torch.where(before >= 0, attention_mask.gather(1, before.clamp(min=0)),
                            torch.zeros_like(attention_mask))
    return real & (attention_mask != id_before)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each sequence's first token. attention_mask [B,T] -> int64 [B,T].

    Example rows [1, 1, 1, 2, 2, 0] -> [0, 1, 2, 0, 1, 2]; [0, 0, 1, 1] (left padding) -> [0, 1, 0, 1];
    [1, 1, 0, 1] -> [0, 1, 2, 3]."""
    T = attention_mask.shape[1]
    column = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    start_column = torch.where(sequence_starts(attention_mask), column, torch.zeros_like(column))
    return column - start_column.cummax(dim=1).values


def padding_mask(mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """The boolean SDPA mask for a [B,T] id mask: [B,1,T,T] (same id) when rows are packed, else
    [B,1,1,T] (key is not padding). No query row is ever fully masked (SDPA would give NaN): padding
    attends to padding, and an all-padding row attends everywhere."""
    if packed:
        same = mask[:, :, None] == mask[:, None, :]  # [B,T,T]
        return same[:, None]  # [B,1,T,T]
    keep = mask > 0  # [B,T]
    keep = keep | ~keep.any(dim=1, keepdim=True)
    return keep[:, None, None, :]  # [B,1,1,T]


def unpadding_layout(attention_mask: torch.Tensor, multiple: int = 1) -> dict[str, torch.Tensor]:
    """The unpadded layout of a batch, computed where the batch is built (CPU, DataLoader workers)
    so that the model needs no host sync to find it: `unpad_indices` int64 [Nb] (the flat
    row * T + column index of each of the N real tokens, then of Nb - N padding positions) and
    `cu_seqlens` int32 [S+2] (the starts of the S sequences, N, then Nb: the last "sequence" is
    the filler: at least one token when the batch has padding, none when it has not).

    Nb is N + 1 rounded up to `multiple` (at most B * T): with multiple > 1 batches of similar size
    share one token count, which is what lets a CUDA graph recorded for one batch be replayed for
    the next. Filler tokens attend only to each other and read as zeros when the output is padded
    back. Rows that are each one whole sequence (no padding, nothing packed) get
    `{"full_rows": True}` instead: the model then takes the padded path with no mask (nothing to
    skip) without asking the device whether the mask has padding.
    """
    mask = attention_mask.long().cpu()
    if bool((mask == 1).all()):
        return {"full_rows": True}
    flat = mask.reshape(-1)
    real = flat.nonzero().squeeze(1)  # [N]
    N = real.numel()
    step = max(multiple, 1)
    Nb = min(-(-(N + 1) // step) * step, flat.numel())
    filler = (flat == 0).nonzero().squeeze(1)[:Nb - N]
    starts = sequence_starts(mask).reshape(-1)[real].nonzero().squeeze(1)  # [S]
    return {"unpad_indices": torch.cat([real, filler]),
            "cu_seqlens": torch.cat([starts, torch.tensor([N, Nb])]).to(torch.int32)}


# Row-aligned batch keys that can be padded on the right, and their padding values.
_ROW_KEYS = {"input_ids": 0, "token_type_ids": 0, "attention_mask": 0, "position_ids": 0}


def pad_rows(batch: dict, multiple: int) -> dict:
    """The batch with its rows padded on the right to a multiple of `multiple` tokens, so batches
    share a few widths (a CUDA graph is recorded per shape). Pads input_ids, token_type_ids,
    attention_mask, position_ids, and token labels [B,T] (with -100); other keys are untouched.
    Multiple-choice batches ([B,C,T]) are padded the same way along T."""
    mask = batch.get("attention_mask")
    if multiple <= 1 or not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        return batch
    T = mask.shape[-1]
    extra = -T % multiple
    if extra == 0:
        return batch
    out = dict(batch)
    for key, value in batch.items():
        fill = _ROW_KEYS.get(key, -100 if key == "labels" else None)
        if fill is not None and isinstance(value, torch.Tensor) and value.shape == mask.shape:
            out[key] = F.pad(value, (0, extra), value=fill)
    return out


def attention_from_layout(attention_mask: torch.Tensor, unpad_indices: torch.Tensor, cu_seqlens: torch.Tensor,
                          backend: str = "auto", padded_if_full: bool = False) -> "UnpaddedAttention | PaddedAttention":
    """The unpadded attention context from an `unpadding_layout` computed with the batch: tensor
    ops only (shapes decide everything), so torch.compile traces it and CUDA graphs can capture it.
    `padded_if_full` (`keep_full_batches_padded`): "auto" keeps the padded layout, with the mask,
    for batches at least REPAD_FILL full."""
    if backend not in LAYOUT_BACKENDS:
        raise ValueError(f"attn_backend={backend!r} cannot use a precomputed unpadded layout")
    B, T = attention_mask.shape
    Nb = unpad_indices.shape[0]
    packed = cu_seqlens.shape[0] - 2 > B  # more sequences than rows
    if backend == "auto" and padded_if_full and Nb >= REPAD_FILL * B * T:  # Nb - 1 real tokens at most
        return PaddedAttention(mask=padding_mask(attention_mask.long(), packed))
    valid = torch.arange(Nb, device=unpad_indices.device) < cu_seqlens[-2]  # False at filler tokens
    # The filler sequence can be longer than a row; Nb - B bounds it (every row has a real token).
    return UnpaddedAttention(indices=unpad_indices, cu_seqlens=cu_seqlens, max_seqlen=max(T, Nb - B),
                             batch_size=B, seq_len=T,
                             kernel=_kernel_of(backend),
                             mask=padding_mask(attention_mask.long(), packed), valid=valid)


@torch.compiler.disable
def prepare_attention(attention_mask: torch.Tensor | None, backend: str = "auto", padded_if_full: bool = False
                      ) -> PaddedAttention | UnpaddedAttention | FlexAttention:
    """Choose the attention layout for one batch.

    attention_mask: [B,T] ints (0 = pad, k > 0 = sequence id) or None (no padding, one sequence per row).
    backend: "padded" | "unpadded" (varlen where unpadded_kernel allows, else re-padded SDPA) |
    "varlen" (same) | "varlen_dropout" (also trains with attention dropout on the flash varlen
    kernel, see flash_varlen.py) | "sdpa_unpadded" | "flex" (FlexAttention with a document block mask) |
    "auto" (unpad only when the batch has padding or more than one sequence in a row: otherwise
    the padded path has nothing to skip and no gather/scatter to pay for; and, with
    `padded_if_full` (see `keep_full_batches_padded`), only when less than REPAD_FILL of the row
    slots hold real tokens).

    Runs eagerly under torch.compile (the token count N is data-dependent): one host sync per
    batch for the layout decision and the nonzero(), none inside the layers.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attn_backend={backend!r} is not supported; valid: {', '.join(BACKENDS)}")
    if attention_mask is None:
        return PaddedAttention(mask=None)
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be [B,T], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.long()
    if backend == "flex":
        return _flex_context(mask)
    real_tokens = mask > 0
    packed, full, real = torch.stack([(mask > 1).any(), real_tokens.all(), real_tokens.sum()]).tolist()  # one host sync
    if backend == "auto":
        if not packed and full:
            return PaddedAttention(mask=None)
        backend = "padded" if padded_if_full and real >= REPAD_FILL * mask.numel() else "unpadded"
    if backend == "padded":
        return PaddedAttention(mask=padding_mask(mask, packed))

    B, T = mask.shape
    flat = mask.reshape(-1)  # [B*T]
    indices = flat.nonzero().squeeze(1)  # [N]
    if packed:
        starts = sequence_starts(mask).reshape(-1)[indices]  # [N] True at each sequence's first token
        start_at = starts.nonzero().squeeze(1)  # [S]
        cu = torch.cat([start_at, start_at.new_tensor([indices.numel()])]).to(torch.int32)  # [S+1]
    else:  # one sequence per row: boundaries are the running sum of row lengths
        cu = F.pad((mask > 0).sum(dim=1).cumsum(0), (1, 0)).to(torch.int32)  # [B+1]
    return UnpaddedAttention(indices=indices, cu_seqlens=cu, max_seqlen=T, batch_size=B, seq_len=T,
                             kernel=_kernel_of(backend), mask=padding_mask(mask, packed))
