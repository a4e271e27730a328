"""The 3-D guided-diffusion U-Net of Lung-DDPM, state-dict compatible with the released checkpoints.

Module and parameter names (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``,
``out``, ``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``, ``qkv``, ``proj_out``,
``op``, ``conv``) define the checkpoint format and are kept as released.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lungddpm.errors import InputError
from lungddpm.model.conditioning import UNKNOWN, AttributeEmbedding
from lungddpm.model.config import ATTENTIONS, ModelConfig

TIME_EMBED_MAX_PERIOD = 1000.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = TIME_EMBED_MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 whatever the input dtype (as released)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in float32 and return the input's dtype."""
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type(x.dtype)


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Apply the block to x conditioned on emb."""
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container passing the timestep embedding to the blocks that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Run each layer, giving emb to TimestepBlocks."""
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block: GN-SiLU-conv, add time embedding, GN-SiLU-dropout-conv (zero-initialised), skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv3d(out_channels, out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Residual update of x conditioned on the timestep embedding."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all voxels, legacy head order (heads split before q/k/v), as released."""

    def __init__(self, channels: int, num_heads: int = 1, use_sdpa: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + proj(attention(norm(x))) over the flattened spatial axes."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self._attend_sdpa(qkv) if self.use_sdpa else self._attend_legacy(qkv)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)

    def _attend_legacy(self, qkv: torch.Tensor) -> torch.Tensor:
        """The released QKVAttentionLegacy: q, k scaled by ch^-1/4, softmax in float32."""
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)

    def _attend_sdpa(self, qkv: torch.Tensor) -> torch.Tensor:
        """The same attention through torch's fused scaled_dot_product_attention."""
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs, self.num_heads, ch * 3, length).transpose(-1, -2).split(ch, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)
        return a.transpose(-1, -2).reshape(bs, -1, length)


class Downsample(nn.Module):
    """Learned downsampling: a 3x3x3 convolution with stride 2 in all three axes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve each spatial size."""
        return self.op(x)


class Upsample(nn.Module):
    """Trilinear x2 upsampling (align_corners=False, as released) followed by a 3x3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Double each spatial size."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="trilinear"))


class UNet3D(nn.Module):
    """The released guided-diffusion U-Net in 3-D (no scale-shift norm, conv resampling, legacy attention)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.model_channels = mc = config.num_channels
        dropout = config.dropout
        use_sdpa = config.attention == ATTENTIONS[0]
        attention_ds = set(config.attention_ds)
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = input_ch = mc * config.channel_mult[0]
        # attribute models only, so that released checkpoints keep their exact parameter set
        self.attribute_embed = AttributeEmbedding(config.attributes, emb_dim) if config.attributes else None
        self.attribute_paint = nn.Linear(emb_dim, ch) if config.attributes else None
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv3d(config.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, dropout)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, config.num_heads, use_sdpa))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, ch, dropout), AttentionBlock(ch, config.num_heads, use_sdpa), ResBlock(ch, emb_dim, ch, dropout)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, mc * mult, dropout)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, config.num_heads, use_sdpa))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv3d(input_ch, config.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.grad_checkpoint = False  # recompute each block's activations in the backward pass (less memory)

    def _block(self, block: TimestepEmbedSequential, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply a block, through torch.utils.checkpoint when gradient checkpointing is on and grads are needed."""
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def paint_attributes(self, x: torch.Tensor, described: torch.Tensor) -> torch.Tensor:
        """The attribute embedding projected to the first features, inside the nodule only (B, C, D, H, W).

        The nodule channel is the input's last (every profile's layout encoding ends with it, in [−1, 1]);
        its weight (channel + 1) / 2 paints the requested characteristics where the nodule is, so they act
        on the nodule's voxels directly rather than only through the global timestep embedding.
        """
        nodule = ((x[:, -1:] + 1) / 2).clamp(0, 1)
        return nodule * self.attribute_paint(described)[:, :, None, None, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise for input x (B, in_channels, D, H, W) at timesteps t (B,), given attributes (B, A) if any."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))
        described = None
        if self.attribute_embed is not None:
            if attributes is None:
                attributes = torch.full((x.shape[0], len(self.attribute_embed.schema)), UNKNOWN, device=x.device)
            described = self.attribute_embed(attributes).to(emb.dtype)
            emb = emb + described
        elif attributes is not None and attributes.shape[-1]:
            raise InputError("this model takes no nodule attributes (it was trained without them); leave them out")
        skips = []
        h = x
        for n, block in enumerate(self.input_blocks):
            h = self._block(block, h, emb)
            if n == 0 and described is not None:
                h = h + self.paint_attributes(x, described).to(h.dtype)
            skips.append(h)
        h = self._block(self.middle_block, h, emb)
        for block in self.output_blocks:
            h = self._block(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
