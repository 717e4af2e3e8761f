"""Analytic FLOP count of a LongCat-Video DiT step, split into GEMM work and attention work.

The benchmark's *floor* is ``gemm_flops / measured GEMM rate + attention_flops /
measured SDPA rate``: the time the step would take if every matrix product ran at the
hardware ceiling and nothing else cost anything. Counts are 2 FLOPs per multiply-add
(the convention of ``torch.utils.flop_counter``).

Backward conventions: a frozen Linear needs only the input gradient (1x its forward), a
trainable one also the weight gradient (2x); attention backward is 2.5x its forward
(flash attention recomputes the scores: 5 products instead of 2). Full activation
recomputation repeats every block forward once; the ``save_attention`` policy keeps
attention outputs, so only the attention is not recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiTShape:
    hidden: int = 4096
    depth: int = 48
    heads: int = 32
    ffn: int = 11008
    caption_channels: int = 4096
    adaln: int = 512
    frequency: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch: tuple[int, int, int] = (1, 2, 2)

    @classmethod
    def from_model_config(cls, config) -> "DiTShape":
        """From a LongCat-Video DiT config, or a diffusers Wan-style one (``num_layers``,
        ``num_attention_heads``, ``attention_head_dim``, ``ffn_dim``, ``text_dim``)."""
        from ..models.longcat_video.transformer import swiglu_hidden_size

        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        if "num_layers" in config and "attention_head_dim" in config:
            hidden = get("num_attention_heads") * get("attention_head_dim")
            return cls(
                hidden=hidden,
                depth=get("num_layers"),
                heads=get("num_attention_heads"),
                # A 2-matrix GELU FFN of width f costs what a 3-matrix SwiGLU of width 2f/3 does.
                ffn=round(2 * get("ffn_dim") / 3),
                caption_channels=get("text_dim"),
                # Wan modulates with a per-block table plus one time projection per sample (not
                # per token or frame): no per-block adaLN GEMM; the time MLP is negligible.
                adaln=0,
                frequency=get("freq_dim"),
                in_channels=get("in_channels"),
                out_channels=get("out_channels"),
                patch=tuple(get("patch_size")),
            )
        return cls(
            hidden=get("hidden_size"),
            depth=get("depth"),
            heads=get("num_heads"),
            ffn=swiglu_hidden_size(get("hidden_size"), get("mlp_ratio")),
            caption_channels=get("caption_channels"),
            adaln=get("adaln_tembed_dim"),
            frequency=get("frequency_embedding_size"),
            in_channels=get("in_channels"),
            out_channels=get("out_channels"),
            patch=tuple(get("patch_size")),
        )


@dataclass
class FlopCount:
    gemm: float = 0.0  # Linear / conv products
    attention: float = 0.0  # QK^T and AV of self- and cross-attention
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.gemm + self.attention

    def add(self, name: str, flops: float, attention: bool = False) -> None:
        self.detail[name] = self.detail.get(name, 0.0) + flops
        if attention:
            self.attention += flops
        else:
            self.gemm += flops


def forward_flops(shape: DiTShape, *, batch: int, frames: int, tokens: int, text_len: int) -> FlopCount:
    """One forward pass. ``tokens`` = patched tokens per sample, ``frames`` = latent frames."""
    C, F, L = shape.hidden, shape.ffn, text_len
    patch_volume = shape.patch[0] * shape.patch[1] * shape.patch[2]
    B, N, T = batch, tokens, frames
    count = FlopCount()
    count.add("patch_embed", 2 * B * N * C * shape.in_channels * patch_volume)
    count.add("timestep_mlp", 2 * B * T * (shape.frequency * shape.adaln + shape.adaln * shape.adaln))
    count.add("caption_mlp", 2 * B * L * (shape.caption_channels * C + C * C))
    per_block = {
        "adaln": 2 * B * T * shape.adaln * 6 * C,
        "qkv": 2 * B * N * C * 3 * C,
        "attn_proj": 2 * B * N * C * C,
        "cross_q": 2 * B * N * C * C,
        "cross_kv": 2 * B * L * C * 2 * C,
        "cross_proj": 2 * B * N * C * C,
        "ffn": 3 * 2 * B * N * C * F,
    }
    for name, flops in per_block.items():
        count.add(name, shape.depth * flops)
    count.add("self_attention", shape.depth * 4 * B * N * N * C, attention=True)
    count.add("cross_attention", shape.depth * 4 * B * N * L * C, attention=True)
    count.add("final_adaln", 2 * B * T * shape.adaln * 2 * C)
    count.add("final_linear", 2 * B * N * C * patch_volume * shape.out_channels)
    return count


LORA_LAYERS = {  # per block: (in, out) of each default LoRA target, as multiples resolved below
    "attn.qkv": ("C", "3C"),
    "attn.proj": ("C", "C"),
    "cross_attn.q_linear": ("C", "C"),
    "cross_attn.kv_linear": ("C", "2C"),
    "cross_attn.proj": ("C", "C"),
    "ffn.w1": ("C", "F"),
    "ffn.w2": ("F", "C"),
    "ffn.w3": ("C", "F"),
}


def lora_forward_flops(shape: DiTShape, *, batch: int, tokens: int, text_len: int, rank: int) -> float:
    sizes = {"C": shape.hidden, "3C": 3 * shape.hidden, "2C": 2 * shape.hidden, "F": shape.ffn}
    total = 0.0
    for name, (fan_in, fan_out) in LORA_LAYERS.items():
        rows = text_len if name == "cross_attn.kv_linear" else tokens
        total += 2 * batch * rows * rank * (sizes[fan_in] + sizes[fan_out])
    return shape.depth * total


def training_step_flops(
    shape: DiTShape,
    *,
    batch: int,
    frames: int,
    tokens: int,
    text_len: int,
    lora_rank: int | None = 16,
    recompute: str = "full",
) -> dict[str, float]:
    """FLOPs of forward + recomputation + backward, split by which ceiling bounds them.

    Returns ``gemm`` (all Linear work), ``attention_forward`` (attention passes that are
    forward-only: the recomputation) and ``attention_fwd_bwd`` (forward + backward of the
    attention, timed against the SDPA forward+backward ceiling).
    """
    fwd = forward_flops(shape, batch=batch, frames=frames, tokens=tokens, text_len=text_len)
    gemm_backward = 2.0 if lora_rank is None else 1.0  # full fine-tuning also needs weight gradients
    gemm = fwd.gemm * (1 + gemm_backward)
    if lora_rank:
        gemm += 3 * lora_forward_flops(shape, batch=batch, tokens=tokens, text_len=text_len, rank=lora_rank)
    attention_recompute = 0.0
    if recompute in ("full", "save_attention"):
        block_gemm = fwd.gemm - fwd.detail["patch_embed"] - fwd.detail["timestep_mlp"] - fwd.detail["caption_mlp"]
        block_gemm -= fwd.detail["final_adaln"] + fwd.detail["final_linear"]
        gemm += block_gemm
        if lora_rank:
            gemm += lora_forward_flops(shape, batch=batch, tokens=tokens, text_len=text_len, rank=lora_rank)
        if recompute == "full":
            attention_recompute = fwd.attention
    elif recompute != "none":
        raise ValueError(f"unknown recompute policy {recompute!r}")
    return {"gemm": gemm, "attention_forward": attention_recompute, "attention_fwd_bwd": 3.5 * fwd.attention}


def sampling_step_flops(shape: DiTShape, *, batch: int, frames: int, tokens: int, text_len: int) -> dict[str, float]:
    """One denoising step: a forward of the whole CFG batch, no gradients."""
    fwd = forward_flops(shape, batch=batch, frames=frames, tokens=tokens, text_len=text_len)
    return {"gemm": fwd.gemm, "attention_forward": fwd.attention, "attention_fwd_bwd": 0.0}


def floor_seconds(flops: dict[str, float], *, gemm_flops_per_s: float, sdpa_fwd_flops_per_s: float, sdpa_fwd_bwd_flops_per_s: float) -> float:
    """Time at the measured ceilings; the figure of merit is measured / floor."""
    seconds = flops["gemm"] / gemm_flops_per_s + flops["attention_forward"] / sdpa_fwd_flops_per_s
    if flops["attention_fwd_bwd"]:
        seconds += flops["attention_fwd_bwd"] / sdpa_fwd_bwd_flops_per_s
    return seconds
