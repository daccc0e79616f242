"""Optimizers and learning-rate schedules.

AdamW with BERT's decay rule (no weight decay on biases and LayerNorm weights), fused on CUDA;
BertAdam, the original BERT scripts' Adam without bias correction, to reproduce their runs;
LAMB for large-batch pre-training (You et al. 2019, the optimizer NVIDIA and the BERT-large
76-minute recipe use); linear warmup followed by linear, cosine, constant or NVIDIA's square-root polynomial decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bertkit.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; biases and LayerNorm weights (all 1-D tensors) do not, as in
    google-research/bert's `exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]`."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear twice
            continue
        seen.add(id(param))
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class DecoupledAdam(torch.optim.Optimizer):
    """The hyperparameters Lamb and BertAdam share: Adam's moments and a decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))


class Lamb(DecoupledAdam):
    """LAMB: Adam moments with a per-tensor trust ratio ||w|| / ||update|| (You et al. 2019, alg. 2).
    Bias correction is applied, as in NVIDIA's implementation used for BERT pre-training."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** step)
                v_hat = v / (1 - beta2 ** step)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_(update * trust, alpha=-group["lr"])
        return loss


class BertAdam(DecoupledAdam):
    """Adam with decoupled weight decay and no bias correction: google-research/bert's
    AdamWeightDecayOptimizer and the BertAdam of pytorch-pretrained-bert's and NVIDIA's fine-tuning
    scripts (`--optimizer bertadam`, to reproduce their runs). update = m / (sqrt(v) + eps) + wd * w;
    without the correction of m and v, the early updates are larger than AdamW's: about 3.2x at step
    1 and step 100, 1.3x at step 1,000 with beta2 0.999."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, grads, alpha=1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(v)
            torch._foreach_add_(denominators, group["eps"])
            updates = torch._foreach_div(m, denominators)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


def clip_each_tensor(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip every parameter's gradient to `max_norm` on its own, as pytorch-pretrained-bert's BertAdam
    does inside its step (clip_grad_norm_(p, max_grad_norm) per parameter; its scripts clip nothing
    else). A tensor's norm, not the global one, decides: small gradients of other tensors are left
    whole. Returns the global norm before clipping, for the log line, as clip_grad_norm_ does."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    if max_norm < float("inf"):
        for grad, norm in zip(grads, norms):
            grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0).to(grad.dtype))
    return total


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "lamb":
        return Lamb(groups, lr=config.lr, betas=betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    if config.optimizer == "bertadam":
        return BertAdam(groups, lr=config.lr, betas=betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    # Fused AdamW: one kernel for all parameters (markedly faster for BERT's ~200 tensors). On the
    # CPU too (torch >= 2.4): all-MiniLM-L6-v2's step took 0.11 s as a loop over tensors, 0.02 s fused,
    # about a quarter of a fine-tuning step. FSDP's sharded (DTensor) parameters keep the loop on the CPU.
    fused = device.type == "cuda" or (device.type == "cpu" and not config.fsdp)
    return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.adam_eps, fused=fused)


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """Multiplier of the peak lr at a step: linear warmup, then linear/cosine decay to 0 or constant."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "poly":
            # NVIDIA's PolyWarmUpScheduler (run_pretraining.py): (1 - progress)^0.5 with progress counted
            # from step 0, not from the end of warmup, so the lr drops there (to 0.85 after 28% warmup).
            return (1.0 - min((step + 1) / total_steps, 1.0)) ** 0.5
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    warmup = config.warmup_steps or int(round(config.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, config.schedule))
