"""A frozen timm Vision Transformer with VisualAD's anomaly and normal tokens.

VisualAD (CVPR 2026) prepends two learnable tokens to the token sequence of a
frozen, pretrained ViT and reads the sequence out at a few tap layers
(``shared/design/visualad.md`` section 2). This module owns that forward pass
and nothing about anomalies: it returns the tapped sequences after a trainable
copy of the backbone's final LayerNorm.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from visualad_med.errors import SettingError

NUM_INSERTED_TOKENS = 2


class TokenOutputs(NamedTuple):
    """What the backbone adapter returns.

    Attributes:
        tapped: ``{l: (B, T, D)}`` sequence ``[a, n, cls, (registers), patches]``
            after block ``l`` and the trainable norm.
        anomaly: ``(B, D)`` anomaly token after the last block and the trainable norm.
        normal: ``(B, D)`` normal token, likewise.
        features: ``{l: (B, T, D)}`` for requested layers, after the frozen backbone norm.
    """

    tapped: dict[int, torch.Tensor]
    anomaly: torch.Tensor
    normal: torch.Tensor
    features: dict[int, torch.Tensor]


def default_taps(depth: int) -> tuple[int, ...]:
    """Tap layers ``[L/4, L/2, 3L/4, L]`` rounded, 1-based block indices."""
    return tuple(sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)}))


def patch_size_of(vit: VisionTransformer) -> int:
    """Side of the square patch of ``vit`` in pixels."""
    height, width = vit.patch_embed.patch_size
    if height != width:
        raise ValueError(f"only square patches are supported, got {height} x {width}")
    return height


def pretrained_grid_of(vit: VisionTransformer) -> tuple[int, int]:
    """Patch grid ``(h, w)`` that the backbone's positional embedding was trained on."""
    return tuple(vit.patch_embed.grid_size)


def resize_patch_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resample a per-patch table as a 2D image, bilinear with ``align_corners=False``.

    Args:
        table: ``(1, old_h * old_w, D)`` rows in row-major patch order.
        old_grid: ``(old_h, old_w)``.
        new_grid: ``(new_h, new_w)``.

    Returns:
        ``(1, new_h * new_w, D)``; ``table`` itself when the grids are equal.
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    dim = table.shape[-1]
    image = table.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=new_grid, mode="bilinear", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(table.dtype)


class TokenViT(nn.Module):
    """Frozen timm ``VisionTransformer`` with inserted anomaly and normal tokens.

    Sequence through the blocks: ``[a, n, cls, (registers), patches]``. The two
    tokens get frozen copies of the class token's positional embedding (zero
    when the backbone has none). Every tapped sequence, and the last block's
    output, goes through a trainable copy of the backbone's final norm.

    Args:
        vit: a timm ``VisionTransformer`` with a class token; frozen here.
        taps: 1-based indices of the blocks whose outputs are read.
    """

    def __init__(self, vit: VisionTransformer, taps: tuple[int, ...]):
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise TypeError(f"expected a timm VisionTransformer, got {type(vit).__name__}")
        if vit.cls_token is None:
            raise ValueError("the backbone has no class token; VisualAD needs one for the tokens' positions")
        depth = len(vit.blocks)
        bad = [t for t in taps if not 1 <= t <= depth]
        if bad or not taps:
            raise SettingError("taps", f"tap layers {list(taps)} do not fit a backbone of depth {depth}")
        self.vit = vit.eval().requires_grad_(False)
        self.vit.patch_embed.strict_img_size = False
        self.taps = tuple(sorted(taps))
        self.patch_size = patch_size_of(vit)
        self.num_prefix_tokens = NUM_INSERTED_TOKENS + vit.num_prefix_tokens
        dim = vit.embed_dim
        self.anomaly_token = nn.Parameter(torch.randn(dim) * dim**-0.5 * 0.1)
        self.normal_token = nn.Parameter(torch.randn(dim) * dim**-0.5 * 0.1)
        self.register_buffer("token_pos_embed", self._class_pos_embed().clone(), persistent=False)
        self.norm = copy.deepcopy(vit.norm).requires_grad_(True)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def train(self, mode: bool = True) -> TokenViT:
        """Switch the trainable parts only; the frozen backbone stays in eval mode."""
        super().train(mode)
        self.vit.eval()
        return self

    def reset_inserted_tokens(self) -> None:
        """Re-copy the class token's positional embedding after the backbone's weights change."""
        self.token_pos_embed = self._class_pos_embed().clone().to(self.anomaly_token.device)
        self.norm.load_state_dict(self.vit.norm.state_dict())

    def _class_pos_embed(self) -> torch.Tensor:
        vit = self.vit
        if vit.pos_embed is None or vit.no_embed_class:
            return torch.zeros(vit.embed_dim)
        return vit.pos_embed[0, 0].detach()

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid of an input of ``height x width`` pixels; both must be multiples of the patch."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"input size {height} x {width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Token sequence before the blocks.

        Args:
            images: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``(B, 2 + prefix + h * w, D)``: ``[a, n, cls, (registers), patches]``
            with positional embeddings added and the backbone's pre-norm applied.
        """
        vit = self.vit
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        patches = vit.patch_embed(images).reshape(images.shape[0], grid[0] * grid[1], -1)
        prefix = [vit.cls_token.expand(images.shape[0], -1, -1)]
        if vit.reg_token is not None:
            prefix.append(vit.reg_token.expand(images.shape[0], -1, -1))
        if vit.pos_embed is not None:
            num_pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
            patch_pos = resize_patch_table(vit.pos_embed[:, num_pos_prefix:], pretrained_grid_of(vit), grid)
            patches = patches + patch_pos
            if num_pos_prefix:
                prefix = [torch.cat(prefix, dim=1) + vit.pos_embed[:, :num_pos_prefix]]
        inserted = torch.stack([self.anomaly_token, self.normal_token]) + self.token_pos_embed
        inserted = inserted.to(patches.dtype).expand(images.shape[0], -1, -1)
        sequence = torch.cat([inserted, *prefix, patches], dim=1)
        return vit.norm_pre(vit.patch_drop(vit.pos_drop(sequence)))

    def forward(self, images: torch.Tensor, feature_layers: tuple[int, ...] = ()) -> TokenOutputs:
        """Run the frozen blocks with the two tokens inserted.

        Args:
            images: ``(B, 3, H, W)`` normalised images, sides multiples of the patch size.
            feature_layers: blocks whose outputs are also returned after the
                backbone's own (frozen) final norm, untouched by training.

        Returns:
            :class:`TokenOutputs`; every sequence is ``(B, T, D)``.
        """
        sequence = self.embed(images)
        tapped, features = {}, {}
        for index, block in enumerate(self.vit.blocks, start=1):
            sequence = block(sequence)
            if index in self.taps:
                tapped[index] = self.norm(sequence)
            if index in feature_layers:
                features[index] = self.vit.norm(sequence)
        last = tapped[self.depth] if self.depth in tapped else self.norm(sequence)
        return TokenOutputs(tapped, last[:, 0], last[:, 1], features)


def num_patches(image_size: int, patch_size: int) -> int:
    """Patch count of a square input; ``image_size`` must be a multiple of ``patch_size``."""
    if image_size % patch_size:
        raise SettingError("image_size", f"image size {image_size} is not a multiple of the patch size {patch_size}")
    return (image_size // patch_size) ** 2


def square_grid(rows: int) -> tuple[int, int]:
    """``(s, s)`` for a table of ``s * s`` rows."""
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"a table of {rows} rows is not a square grid")
    return side, side
