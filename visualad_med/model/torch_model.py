"""The VisualAD model: frozen ViT with two tokens -> per-tap SCA and SAF -> anomaly maps and scores.

VisualAD (CVPR 2026), "Language-Free Zero-Shot Anomaly Detection via Vision
Transformer"; ``shared/design/visualad.md`` sections 2-5. A plain ``nn.Module``;
:func:`~visualad_med.model.visualad.build_model` builds it on a timm ViT.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .backbone import TokenViT, resize_patch_table, square_grid
from .checkpoint import HeadCheckpointError, HeadConfig
from .head import SelfAlignment, SpatialCrossAttention, token_contrast
from .body_reference import body_mask, reference_to_body
from .map_settings import MapSettings
from .selfsim import default_layers, self_similarity_scores
from .smoothing import GaussianSmoothing

logger = logging.getLogger(__name__)

TOP_FRACTION = 0.01


def upsample_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (``align_corners=False``) upsampling of ``(B, h, w)`` patch scores to ``(B, H, W)``."""
    return F.interpolate(scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def top_fraction_mean(maps: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """Mean of the top ``ceil(fraction * H * W)`` values of each ``(B, H, W)`` map; returns ``(B,)``."""
    flat = maps.flatten(1)
    count = max(1, math.ceil(fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(dim=1)


class VisualAD(nn.Module):
    """VisualAD on a frozen timm ViT.

    Args:
        backbone: the token-inserting backbone adapter.
        config: head configuration (backbone identity, input size, taps, ...).

    Call ``model(images)`` with ``(B, 3, H, W)`` normalised images (sides
    multiples of the patch size; ``config.image_size`` is what the head was
    trained at) to get a dict:

    - ``map_raw`` ``(B, H, W)``: sum over taps of the upsampled patch scores;
    - ``map`` ``(B, H, W)``: ``map_raw`` smoothed (Gaussian, sigma 4 px), minus its
      median over the image's body when ``settings.map_reference`` is ``body``;
    - ``score`` ``(B,)``: mean of the top 1 % of ``map``;
    - ``probability`` ``(B, H, W)``: ``sigmoid(map / #taps)``, a bounded view for display;
    - ``patch_scores`` ``{tap: (B, h, w)}``: ``cos(SAF(p), a') - cos(SAF(p), n')``;
    - ``tokens`` ``{tap: (B, 2, D)}``: the SCA-refined anomaly and normal tokens.

    ``settings.scoring`` (:class:`~visualad_med.model.map_settings.MapSettings`: the call's ``settings``,
    a run's choice; the model's own, the head's, by default) chooses what ``map_raw`` sums: the method's patch scores
    (``visualad``, the default and what training uses), training-free
    self-similarity (``selfsim``, :mod:`visualad_med.model.selfsim`), or
    ``combined``: ``visualad + selfsim_weight * selfsim``.
    ``settings.map_reference`` (``none`` or ``body``, :mod:`visualad_med.model.body_reference`)
    chooses whether ``map`` is re-referenced to the image's own body.
    """

    def __init__(self, backbone: TokenViT, config: HeadConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.settings = MapSettings.of(config)
        side = config.image_size // backbone.patch_size
        dim = backbone.embed_dim
        self.sca = nn.ModuleDict(
            {
                str(tap): SpatialCrossAttention(
                    dim, (side, side), config.num_anchors, config.dropout, config.res_scale_init
                )
                for tap in backbone.taps
            }
        )
        self.saf = nn.ModuleDict({str(tap): SelfAlignment(dim, config.dropout) for tap in backbone.taps})
        self.smoothing = GaussianSmoothing(sigma=4.0)

    @property
    def taps(self) -> tuple[int, ...]:
        return self.backbone.taps

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def selfsim_layers(self) -> tuple[int, ...]:
        return self.config.selfsim_layers or default_layers(self.backbone.depth)

    def set_scoring(self, scoring: str, weight: float | None = None) -> VisualAD:
        """Set the model's own scoring (and combination weight): what calibration uses and a saved head records.

        A run passes its choice per call instead (``model(images, settings=...)``).
        """
        weight = self.settings.selfsim_weight if weight is None else float(weight)
        self.settings = replace(self.settings, scoring=scoring, selfsim_weight=weight)
        return self

    def set_map_reference(self, reference: str) -> VisualAD:
        """Set the model's own map reference, ``none`` or ``body``: what training uses and a saved head records."""
        self.settings = replace(self.settings, map_reference=reference)
        return self

    def set_threshold(self, threshold: float | None) -> VisualAD:
        """Set the decision threshold on ``map`` (a calibration's result; saved with the head)."""
        self.settings = replace(self.settings, threshold=None if threshold is None else float(threshold))
        return self

    def record_training(self, provenance: dict) -> VisualAD:
        """Replace the provenance a saved head carries (data, recipe, calibration)."""
        self.config = replace(self.config, training=dict(provenance))
        return self

    def map_bound(self, settings: MapSettings | None = None) -> float:
        """Largest possible ``|map|`` under ``settings`` (default the model's own)."""
        settings = settings or self.settings
        method = 2.0 * len(self.taps)
        selfsim = 2.0 * len(self.selfsim_layers)
        bound = {"visualad": method, "selfsim": selfsim}.get(settings.scoring, method + settings.selfsim_weight * selfsim)
        return 2.0 * bound if settings.map_reference == "body" else bound

    @property
    def threshold(self) -> float:
        """Decision threshold on ``map``; 0 (equal similarity to both tokens) when uncalibrated."""
        return 0.0 if self.settings.threshold is None else self.settings.threshold

    def train(self, mode: bool = True) -> VisualAD:
        super().train(mode)
        self.backbone.train(mode)
        return self

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The trained parameters in the reference's two groups: ``tokens`` and ``head``."""
        tokens = [self.backbone.anomaly_token, self.backbone.normal_token]
        head = [*self.backbone.norm.parameters(), *self.sca.parameters(), *self.saf.parameters()]
        return {"tokens": tokens, "head": head}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained tensor, nothing of the frozen backbone."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.vit.")}

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is a float ``(B, 3, H, W)`` tensor with patch-multiple sides."""
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected normalised images of shape (B, 3, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"expected a float tensor of normalised images, got {images.dtype}")
        self.backbone.grid_for(images.shape[-2], images.shape[-1])

    def forward(self, images: torch.Tensor, feature_layers: tuple[int, ...] = (),
                settings: MapSettings | None = None) -> dict:
        """See the class docstring for the returned keys and shapes.

        ``feature_layers`` adds ``features`` ``{layer: (B, N, D)}``: the frozen backbone's patch
        tokens after those blocks (for cohort and reference scoring, :mod:`visualad_med.model.mutual`).
        ``settings`` are the run's map settings (:meth:`MapSettings.for_run`); default the model's own.
        """
        self.check_images(images)
        settings = settings or self.settings
        batch, _, height, width = images.shape
        grid = self.backbone.grid_for(height, width)
        scoring = settings.scoring
        layers = self.selfsim_layers if scoring != "visualad" else ()
        tapped, anomaly, normal, frozen = self.backbone(images, tuple(sorted({*layers, *feature_layers})))
        tokens = torch.stack([anomaly, normal], dim=1)
        prefix = self.backbone.num_prefix_tokens
        patch_scores, refined = {}, {}
        for tap in self.taps:
            patches = tapped[tap][:, prefix:]
            refined[tap] = self.sca[str(tap)](tokens, patches, grid)
            features = self.saf[str(tap)](patches)
            scores = token_contrast(features, refined[tap][:, 0], refined[tap][:, 1])
            patch_scores[tap] = scores.reshape(batch, *grid)
        scores = torch.stack(list(patch_scores.values())).sum(0).float()
        if layers:
            selfsim = sum(self_similarity_scores(frozen[layer][:, prefix:], self.config.selfsim_neighbours)
                          for layer in layers).reshape(batch, *grid)
            scores = selfsim if scoring == "selfsim" else scores + settings.selfsim_weight * selfsim
        map_raw = upsample_scores(scores, (height, width))
        smoothed = self.smoothing(map_raw)
        if settings.map_reference == "body":
            smoothed = reference_to_body(smoothed, body_mask(images, self.config.mean, self.config.std))
        outputs = {
            "map_raw": map_raw,
            "map": smoothed,
            "score": top_fraction_mean(smoothed),
            "probability": torch.sigmoid(smoothed / len(self.taps)),
            "patch_scores": patch_scores,
            "tokens": refined,
        }
        if feature_layers:
            outputs["features"] = {layer: frozen[layer][:, prefix:] for layer in feature_layers}
        return outputs

    def preprocess(self, image) -> torch.Tensor:
        """Turn a PIL image or uint8 array (grey, RGB or RGBA) into a normalised ``(3, S, S)`` tensor.

        The image is letterboxed (longest side to ``S``, padded with black) as volume slices and
        ``evaluate`` images are.
        """
        from PIL import Image

        from visualad_med.io.images import letterbox_image, pil_to_rgb_array

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        return letterbox_image(pil_to_rgb_array(image), self.image_size, self.config.mean, self.config.std)[0]

    def save_head(self, path: str | Path) -> Path:
        """Write the trained tensors and :class:`HeadConfig` with the settings in force (safetensors + JSON)."""
        return checkpoint.save(Path(path), self.head_state_dict(), self.settings.recorded_in(self.config))

    def load_head(self, path: str | Path) -> VisualAD:
        """Load a head in our format or the reference implementation's; returns ``self``.

        Raises:
            HeadCheckpointError: unreadable file, pickled code, or a head whose
                width, depth, patch size or taps do not fit this backbone.
        """
        path = Path(path)
        tensors, config, reference = checkpoint.read(path)
        if config is None:
            config = self._config_for_reference(reference, path)
            tensors = checkpoint.reference_to_ours(reference["raw"], (self.grid_side,) * 2)
        self._check_fits(config, path)
        tensors = self._resample_position_tables(tensors)
        own = self.head_state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise HeadCheckpointError(f"{path}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in tensors.items():
            if tensor.shape != own[name].shape:
                raise HeadCheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model needs {tuple(own[name].shape)}"
                )
        self.load_state_dict(tensors, strict=False)
        self.config = replace(config, **{name: getattr(self.config, name) for name in checkpoint.MODEL_FIELDS})
        self.settings = MapSettings.of(self.config)
        return self

    @property
    def grid_side(self) -> int:
        return self.config.image_size // self.backbone.patch_size

    def _config_for_reference(self, reference: dict, path: Path) -> HeadConfig:
        raw = reference["raw"]
        return HeadConfig(
            backbone=str(raw.get("backbone", "reference")),
            weights_sha256=None,
            embed_dim=int(raw["anomaly_token"].shape[-1]),
            depth=self.backbone.depth,
            patch_size=self.backbone.patch_size,
            image_size=int(reference["image_size"] or self.image_size),
            taps=reference["taps"],
            mean=self.config.mean,
            std=self.config.std,
        )

    def _check_fits(self, config: HeadConfig, path: Path) -> None:
        own = self.config
        for name in ("embed_dim", "depth", "patch_size", "taps"):
            if getattr(config, name) != getattr(own, name):
                raise HeadCheckpointError(
                    f"head {path} does not fit backbone {own.backbone!r}: {name} is {getattr(config, name)} "
                    f"in the head but {getattr(own, name)} in the backbone"
                )
        if config.weights_sha256 and own.weights_sha256 and config.weights_sha256 != own.weights_sha256:
            logger.warning(
                "head %s was trained on backbone weights %s but is loaded onto %s; results may differ",
                path,
                config.weights_sha256[:12],
                own.weights_sha256[:12],
            )

    def _resample_position_tables(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bring each SCA position table to this model's grid (heads trained at another size)."""
        result = dict(tensors)
        for tap, module in self.sca.items():
            name = f"sca.{tap}.pos_encoding"
            if name in result:
                source = square_grid(result[name].shape[1])
                result[name] = resize_patch_table(result[name], source, module.grid)
        return result
