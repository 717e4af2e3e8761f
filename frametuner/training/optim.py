"""Optimizers and learning-rate schedules."""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


class AdamWBf16States(torch.optim.Optimizer):
    """AdamW whose moments are stored in bfloat16 (half the optimizer memory of fp32 states).

    For full fine-tuning, where the moments of 13.6B parameters would take 109 GB in fp32.
    The update itself is computed in float32 per tensor.
    """

    def __init__(self, params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.bfloat16)
                state["step"] += 1
                step = state["step"].item()
                grad = param.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
                bias1 = 1 - beta1**step
                bias2 = 1 - beta2**step
                denom = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
                updated = param.float().mul_(1 - group["lr"] * group["weight_decay"])
                updated.addcdiv_(exp_avg, denom, value=-group["lr"] / bias1)
                param.copy_(updated)
        return loss


def build_optimizer(config, params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, weight_decay=config.adam_weight_decay)
    if config.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise RuntimeError("optimizer 'adamw8bit' (bitsandbytes) needs a CUDA GPU; use optimizer 'adamw' on this machine")
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise RuntimeError("optimizer 'adamw8bit' needs bitsandbytes: pip install bitsandbytes") from error
        return bnb.optim.AdamW8bit(params, **kwargs)
    if config.model_type == "full" and config.optimizer_state_dtype == "bf16":
        return AdamWBf16States(params, **kwargs)
    fused = device.type == "cuda" and all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def build_lr_scheduler(config, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    """diffusers' schedules: constant | constant_with_warmup | cosine | polynomial, linear warm-up."""
    from diffusers.optimization import get_scheduler

    warmup = config.lr_warmup_steps if config.lr_scheduler != "constant" else 0
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
