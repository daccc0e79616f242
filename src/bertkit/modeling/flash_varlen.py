"""Flash attention on packed variable-length sequences, with attention dropout.

`torch.nn.attention.varlen.varlen_attn` calls the flash kernel with dropout fixed at 0, so BERT
training (attention dropout 0.1) had to re-pad q/k/v to [B,T] for SDPA in every layer. The kernel
itself (`aten._flash_attention_forward` with `cum_seq_q`/`cum_seq_k`) takes a dropout probability
and returns the Philox seed and offset it used; its backward takes them back and regenerates the
same dropout mask. `varlen_attention` wraps that pair as an autograd function.

CUDA only, 16-bit only (the kernel's own limits). `attention.UnpaddedAttention` calls it for the
"varlen_dropout" backend and keeps the re-padded SDPA path everywhere else.
"""

from __future__ import annotations

import torch


class _VarlenFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, dropout_p: float) -> torch.Tensor:
        out, logsumexp, philox_seed, philox_offset, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, False, False)
        ctx.save_for_backward(q, k, v, out, logsumexp, cu_seqlens, philox_seed, philox_offset)
        ctx.max_seqlen, ctx.dropout_p = max_seqlen, dropout_p
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, logsumexp, cu_seqlens, philox_seed, philox_offset = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, logsumexp, cu_seqlens, cu_seqlens, ctx.max_seqlen,
            ctx.max_seqlen, ctx.dropout_p, False, philox_seed, philox_offset)
        return dq, dk, dv, None, None, None


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, dropout_p: float = 0.0) -> torch.Tensor:
    """q, k, v [N, heads, D] (the packed tokens of all sequences; the last dimension contiguous),
    cu_seqlens int32 [S+1] (sequence starts, then N), max_seqlen an upper bound on the longest
    sequence -> [N, heads, D]: softmax(q k^T / sqrt(D)) v within each sequence, with dropout
    `dropout_p` on the attention probabilities."""
    if q.device.type != "cuda":
        raise RuntimeError("varlen_attention runs on CUDA only (the flash kernel); use the "
                           "'sdpa_unpadded' attention backend on this device")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"varlen_attention needs fp16 or bf16 inputs (train under autocast), got {q.dtype}")
    return _VarlenFlashAttention.apply(q, k, v, cu_seqlens, max_seqlen, dropout_p)
