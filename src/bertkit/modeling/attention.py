"""Attention over padded or unpadded batches.

Every encoder layer applies its Linear and LayerNorm modules to whatever token layout it is given:
`[B, T, H]` on the padded path or `[N, H]` (only the real tokens) on the unpadded path. Only the
attention product itself needs to know the layout, so it lives behind one small interface:

    ctx = prepare_attention(attention_mask, backend)   # once per forward
    x = ctx.unpad(x)                                   # [B,T,H] -> layout of ctx
    out = ctx.attend(q, k, v, num_heads, dropout_p)    # q/k/v/out in that layout
    x = ctx.pad(x)                                     # back to [B,T,H], zeros at pads

`attention_mask` follows docs/INTERFACES.md: 0 = padding, a positive integer = a sequence id; a
token attends only to tokens of its own row with the same id. Ids must form contiguous runs within
a row (packed documents 1, 1, 1, 2, 2, 0, 0), which is what the collators produce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "padded", "unpadded", "varlen", "sdpa_unpadded", "flex")


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., H] -> [..., heads, head_dim]."""
    return x.view(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


@dataclass
class PaddedAttention:
    """Attention on the `[B, T, H]` layout with SDPA and a boolean mask (None = attend everywhere)."""

    mask: torch.Tensor | None  # bool, [B,1,1,T] (key padding) or [B,1,T,T] (same sequence id)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
               dropout_p: float) -> torch.Tensor:
        """q, k, v [B,T,H] -> [B,T,H]."""
        B, T, H = q.shape
        q, k, v = (_split_heads(t, num_heads).transpose(1, 2) for t in (q, k, v))  # [B,heads,T,D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=dropout_p)
        return out.transpose(1, 2).reshape(B, T, H)  # [B,heads,T,D] -> [B,T,H]


@dataclass
class UnpaddedAttention:
    """Attention on the `[N, H]` layout: the N real tokens of the batch, sequence after sequence.

    Sequences are the runs of equal non-zero ids in each row, so a packed row contributes one
    sequence per document; `cu_seqlens[s]` is where sequence s starts in the N tokens.
    """

    indices: torch.Tensor  # int64 [N]: flat index (row * T + column) of each real token
    cu_seqlens: torch.Tensor  # int32 [S+1]: sequence boundaries in the N tokens
    max_seqlen: int  # longest sequence
    batch_size: int
    seq_len: int
    kernel: str  # "varlen" (CUDA flash kernel) or "sdpa_unpadded" (re-pad per sequence + SDPA)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B,T,H] -> [N,H]."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.indices)  # [B*T,H] -> [N,H]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N,H] -> [B,T,H] with zeros at padding."""
        out = x.new_zeros(self.batch_size * self.seq_len, x.shape[-1])
        out = out.index_copy(0, self.indices, x)
        return out.view(self.batch_size, self.seq_len, x.shape[-1])  # [B*T,H] -> [B,T,H]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
               dropout_p: float) -> torch.Tensor:
        """q, k, v [N,H] -> [N,H]."""
        N, H = q.shape
        q, k, v = (_split_heads(t, num_heads) for t in (q, k, v))  # [N,heads,D]
        # varlen_attn is a flash kernel: 16-bit inputs only and no dropout argument, so fp32 runs
        # and training with attention dropout take the re-padding path (SDPA has dropout_p).
        if self.kernel == "varlen" and dropout_p == 0.0 and q.dtype in (torch.float16, torch.bfloat16):
            from torch.nn.attention.varlen import varlen_attn

            out = varlen_attn(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen)
        else:
            out = self._attend_repadded(q, k, v, dropout_p)
        return out.reshape(N, H)  # [N,heads,D] -> [N,H]

    def _attend_repadded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         dropout_p: float) -> torch.Tensor:
        """Portable fallback: scatter each sequence into its own row of [S, max_len], run SDPA with
        a key-padding mask, gather the real tokens back. q, k, v [N,heads,D] -> [N,heads,D]."""
        N, heads, D = q.shape
        S, L = self.cu_seqlens.numel() - 1, self.max_seqlen
        starts = self.cu_seqlens.long()
        token = torch.arange(N, device=q.device)
        seq = torch.searchsorted(starts[1:], token, right=True)  # [N] sequence of each token
        pos = token - starts[seq]  # [N] position inside its sequence
        lengths = starts[1:] - starts[:-1]  # [S]

        def repad(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(S, L, heads, D)
            out[seq, pos] = t  # [N,heads,D] -> [S,L,heads,D]
            return out.transpose(1, 2)  # [S,heads,L,D]

        key_ok = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # [S,L]
        out = F.scaled_dot_product_attention(repad(q), repad(k), repad(v),
                                             attn_mask=key_ok[:, None, None, :], dropout_p=dropout_p)
        return out.transpose(1, 2)[seq, pos]  # [S,heads,L,D] -> [S,L,heads,D] -> [N,heads,D]


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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
               dropout_p: float) -> torch.Tensor:
        """q, k, v [B,T,H] -> [B,T,H]."""
        if dropout_p > 0.0:
            # flex_attention has no dropout; training with attention dropout uses SDPA with the
            # equivalent dense mask so that the regularisation is the same on every path.
            same = self.ids[:, :, None] == self.ids[:, None, :]  # [B,T,T]
            return PaddedAttention(mask=same[:, None]).attend(q, k, v, num_heads, dropout_p)
        from torch.nn.attention.flex_attention import flex_attention

        B, T, H = q.shape
        q, k, v = (_split_heads(t, num_heads).transpose(1, 2) for t in (q, k, v))  # [B,heads,T,D]
        out = flex_attention(q, k, v, block_mask=self.block_mask)
        return out.transpose(1, 2).reshape(B, T, H)  # [B,heads,T,D] -> [B,T,H]


def _flex_context(mask: torch.Tensor) -> FlexAttention:
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sequence(b, h, q_idx, kv_idx):  # padding (id 0) attends to padding: no empty rows
        return mask[b, q_idx] == mask[b, kv_idx]

    B, T = mask.shape
    block_mask = create_block_mask(same_sequence, B, None, T, T, device=mask.device)
    return FlexAttention(ids=mask, block_mask=block_mask)


def sequence_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """bool [B,T]: True where a new sequence begins (the id differs from the token before it)."""
    starts = torch.ones_like(attention_mask, dtype=torch.bool)
    starts[:, 1:] = attention_mask[:, 1:] != attention_mask[:, :-1]
    return starts


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at each sequence start. attention_mask [B,T] -> int64 [B,T].

    Example row [1, 1, 1, 2, 2, 0] -> [0, 1, 2, 0, 1, 0]."""
    T = attention_mask.shape[1]
    column = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    start_column = torch.where(sequence_starts(attention_mask), column, torch.zeros_like(column))
    return column - start_column.cummax(dim=1).values


def prepare_attention(attention_mask: torch.Tensor | None, backend: str = "auto"
                      ) -> PaddedAttention | UnpaddedAttention | FlexAttention:
    """Choose the attention layout for one batch.

    attention_mask: [B,T] ints (0 = pad, k > 0 = sequence id) or None (no padding, one sequence per row).
    backend: "padded" | "unpadded" (varlen on CUDA, else re-padding) | "varlen" | "sdpa_unpadded" |
    "flex" (FlexAttention with a document block mask) |
    "auto" (unpad only when the batch has padding or more than one sequence in a row: otherwise
    the padded path has nothing to skip and no gather/scatter to pay for).
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
    packed = bool((mask > 1).any())
    if backend == "auto":
        if not packed and bool((mask > 0).all()):
            return PaddedAttention(mask=None)
        backend = "unpadded"
    if backend == "padded":
        if packed:
            # Same id attends to same id; padding (id 0) attends only to padding, so no query row
            # is fully masked (SDPA would return NaN for it).
            same = mask[:, :, None] == mask[:, None, :]  # [B,T,T]
            return PaddedAttention(mask=same[:, None])  # [B,1,T,T]
        keep = mask > 0  # [B,T]
        keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-padding row attends everywhere, not to nothing
        return PaddedAttention(mask=keep[:, None, None, :])  # [B,1,1,T]

    B, T = mask.shape
    flat = mask.reshape(-1)  # [B*T]
    indices = flat.nonzero().squeeze(1)  # [N]
    starts = sequence_starts(mask).reshape(-1)[indices]  # [N] True at each sequence's first token
    start_at = starts.nonzero().squeeze(1)  # [S]
    n = indices.numel()
    cu = torch.cat([start_at, start_at.new_tensor([n])]).to(torch.int32)  # [S+1]
    max_seqlen = int((cu[1:] - cu[:-1]).max()) if n else 0
    if backend == "unpadded":
        backend = "varlen" if mask.is_cuda else "sdpa_unpadded"
    return UnpaddedAttention(indices=indices, cu_seqlens=cu, max_seqlen=max_seqlen,
                             batch_size=B, seq_len=T, kernel=backend)
