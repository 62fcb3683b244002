"""VisualAD training losses (``shared/design/visualad.md`` section 6).

``seg``: per tap, focal loss (gamma 2, label smoothing 1e-5) on the two-channel
map ``[1 - sigmoid(m), sigmoid(m)]`` plus binary Dice on ``sigmoid(m)``;
``image``: BCE-with-logits of the top-1 % mean of the unsmoothed summed map;
``contrast``: ``mean(relu(cos(a', n') + 0.5))`` on the last tap's refined tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visualad_med.model.torch_model import top_fraction_mean, upsample_scores

FOCAL_GAMMA = 2.0
FOCAL_SMOOTH = 1e-5
DICE_SMOOTH = 1.0
CONTRAST_MARGIN = 0.5


def focal_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary focal loss over the two-channel map ``[1 - p, p]``.

    Args:
        probability: ``(B, H, W)`` anomaly probability ``p``.
        target: ``(B, H, W)`` binary mask.

    Returns:
        Scalar mean over pixels.
    """
    smooth = FOCAL_SMOOTH
    one_hot = torch.stack([1 - target, target], dim=1).clamp(smooth, 1 - smooth)
    channels = torch.stack([1 - probability, probability], dim=1)
    pt = (one_hot * channels).sum(dim=1) + smooth
    return (-((1 - pt) ** FOCAL_GAMMA) * pt.log()).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary Dice loss, ``1 - mean_b (2|p t| + 1) / (|p| + |t| + 1)``, on ``(B, H, W)`` maps."""
    probability, target = probability.flatten(1), target.flatten(1)
    dice = (2 * (probability * target).sum(1) + DICE_SMOOTH) / (probability.sum(1) + target.sum(1) + DICE_SMOOTH)
    return 1 - dice.mean()


def visualad_losses(outputs: dict, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three VisualAD losses.

    Args:
        outputs: the model's output dict (``patch_scores``, ``map_raw``, ``tokens``).
        masks: ``(B, H, W)`` ground-truth masks, binarised here at 0.5.
        labels: ``(B,)`` image labels (0 normal, 1 anomalous).

    Returns:
        ``{"seg", "image", "contrast", "total"}`` scalars.
    """
    target = (masks > 0.5).float()
    size = tuple(masks.shape[-2:])
    seg = masks.new_zeros(())
    for scores in outputs["patch_scores"].values():
        probability = torch.sigmoid(upsample_scores(scores.float(), size))
        seg = seg + focal_loss(probability, target) + dice_loss(probability, target)
    image = F.binary_cross_entropy_with_logits(top_fraction_mean(outputs["map_raw"]), labels.float())
    last = outputs["tokens"][max(outputs["tokens"])]
    contrast = F.relu(F.cosine_similarity(last[:, 0], last[:, 1], dim=-1) + CONTRAST_MARGIN).mean()
    return {"seg": seg, "image": image, "contrast": contrast, "total": seg + image + contrast}
