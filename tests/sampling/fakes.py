"""Small stand-ins with the interfaces the cache room's text encoder and VAE provide.

``encode(prompts) -> (embeds [B, 512, C], mask [B, 512] int64)`` and a VAE whose
``encode(uint8 [F, H, W, 3]) -> [16, T, H/8, W/8]`` and ``decode([16, T, h, w]) -> uint8
[1 + 4 (T - 1), 8 h, 8 w, 3]`` keep the Wan VAE's shapes. Both are deterministic and
record what they were given, so tests can check the pipeline's plumbing exactly.
"""

from __future__ import annotations

import zlib

import torch

TEXT_LENGTH = 512


class FakeTextEncoder:
    def __init__(self, channels: int):
        self.channels = channels
        self.calls: list[list[str]] = []

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(prompts))
        embeds = torch.zeros(len(prompts), TEXT_LENGTH, self.channels)
        mask = torch.zeros(len(prompts), TEXT_LENGTH, dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            tokens = len(prompt.split()) + 1  # + the end-of-sequence token
            generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            embeds[row, :tokens] = torch.randn(tokens, self.channels, generator=generator)
            mask[row, :tokens] = 1
        return embeds, mask


class FakeVAE:
    channels, time_stride, space_stride = 16, 4, 8

    def __init__(self):
        self.encoded: list[torch.Tensor] = []
        self.decoded: list[torch.Tensor] = []

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        self.encoded.append(frames.clone())
        picked = frames[:: self.time_stride].float().permute(3, 0, 1, 2) / 127.5 - 1  # [3, T, H, W]
        pooled = torch.nn.functional.avg_pool3d(picked[None], (1, self.space_stride, self.space_stride))[0]
        latents = torch.zeros(self.channels, *pooled.shape[1:])
        latents[:3] = pooled
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.decoded.append(latents.detach().cpu().clone())
        rgb = latents[:3].float().cpu()
        repeats = torch.tensor([1] + [self.time_stride] * (rgb.shape[1] - 1))
        rgb = rgb.repeat_interleave(repeats, dim=1)
        rgb = rgb.repeat_interleave(self.space_stride, dim=2).repeat_interleave(self.space_stride, dim=3)
        return ((rgb.tanh() + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


class FakeComponents:
    """Installs the fakes as ``spec.load_text_encoder`` / ``spec.load_vae`` (via monkeypatch)."""

    def __init__(self, monkeypatch, spec_class, channels: int = 64):
        self.text_encoder = FakeTextEncoder(channels)
        self.vae = FakeVAE()
        self.loaded: list[str] = []
        monkeypatch.setattr(spec_class, "load_text_encoder", self._loader("text_encoder", self.text_encoder), raising=False)
        monkeypatch.setattr(spec_class, "load_vae", self._loader("vae", self.vae), raising=False)

    def _loader(self, name, component):
        def load(spec, root, *, device, dtype):
            self.loaded.append(name)
            return component

        return load
