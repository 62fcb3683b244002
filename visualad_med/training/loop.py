"""The auxiliary training stage: tokens, final norm, SCA and SAF on industrial images with masks.

``shared/design/visualad.md`` section 6: AdamW (0.9, 0.999, weight decay 0.01),
learning rate 1e-3 for the two tokens and 1e-4 for the rest, cosine annealing
per epoch to 0.1x, gradient-norm clip 1.0 on each token, batch 8, seed 111.
A plain loop: one epoch is a pass of a ``DataLoader``; every epoch writes a head
checkpoint and the optimiser state, so ``resume`` continues exactly (the data
order and dropout of epoch ``e`` are seeded from ``(seed, e)`` alone).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler
from tqdm import tqdm

from visualad_med.io.atomic import atomic_path
from .calibration import calibrate_threshold
from visualad_med.datasets import collate_skip_invalid
from .losses import visualad_losses
from visualad_med.model.torch_model import VisualAD
from visualad_med.model.devices import autocast

logger = logging.getLogger(__name__)

STATE_NAME = "train_state.pt"
FINAL_HEAD = "head.safetensors"


HEAD_LR_FACTOR = 0.1
"""The head's learning rate relative to the tokens' (the reference's recipe)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of the auxiliary stage (reference values by default).

    Attributes:
        epochs: passes over the data.
        batch_size: images per step (per process under ``torchrun``).
        lr_tokens: learning rate of the anomaly and normal tokens.
        lr_head: learning rate of the final norm, SCA and SAF; ``None``: :data:`HEAD_LR_FACTOR` x ``lr_tokens``.
        weight_decay: AdamW weight decay.
        final_lr_fraction: cosine annealing ends at this fraction of each rate.
        token_clip: gradient-norm clip applied to each token separately.
        seed: seeds data order, dropout and synthetic anomalies.
        max_steps: optional cap on steps per epoch (quick runs).
        workers: ``DataLoader`` worker processes.
        calibration_images: images of the training set used for the threshold (all when None).
        precision: autocast of the forward pass (see :func:`visualad_med.model.devices.autocast`).
    """

    epochs: int = 2
    batch_size: int = 8
    lr_tokens: float = 1e-3
    lr_head: float | None = None
    weight_decay: float = 0.01
    final_lr_fraction: float = 0.1
    token_clip: float = 1.0
    seed: int = 111
    max_steps: int | None = None
    workers: int = 0
    calibration_images: int | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.lr_head is None:
            self.lr_head = HEAD_LR_FACTOR * self.lr_tokens


def cosine_factor(epoch: int, epochs: int, final_fraction: float) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based): 1 at the start, ``final_fraction`` at the end."""
    if epochs <= 1:
        return 1.0
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * epoch / (epochs - 1)))


def make_optimizer(model: VisualAD, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trained parameters in two groups (``tokens``, ``head``)."""
    groups = model.trainable_parameters()
    return torch.optim.AdamW(
        [
            {"params": groups["tokens"], "lr": config.lr_tokens, "name": "tokens"},
            {"params": groups["head"], "lr": config.lr_head, "name": "head"},
        ],
        betas=(0.9, 0.999),
        weight_decay=config.weight_decay,
    )


def _set_epoch_rates(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> None:
    factor = cosine_factor(epoch, config.epochs, config.final_lr_fraction)
    for group in optimizer.param_groups:
        base = config.lr_tokens if group["name"] == "tokens" else config.lr_head
        group["lr"] = base * factor


def _distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _loader(dataset: Dataset, config: TrainConfig, epoch: int, world: int, rank: int,
            sample_weights: torch.Tensor | None = None) -> DataLoader:
    """Data order of ``epoch`` depends on ``(seed, epoch)`` only, so a resumed run sees the same batches.

    With ``sample_weights`` (``(len(dataset),)``), each process draws ``len(dataset) / world``
    items with replacement in proportion to them (class balancing) instead of shuffling.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if sample_weights is not None:
        generator = torch.Generator().manual_seed((config.seed * 1000 + epoch) * 64 + rank)
        sampler = WeightedRandomSampler(sample_weights, max(1, len(dataset) // world), replacement=True,
                                        generator=generator)
        return DataLoader(dataset, config.batch_size, sampler=sampler, num_workers=config.workers,
                          collate_fn=collate_skip_invalid)
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, config.batch_size, sampler=sampler, num_workers=config.workers,
                          collate_fn=collate_skip_invalid, drop_last=False)
    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    return DataLoader(dataset, config.batch_size, shuffle=True, generator=generator, num_workers=config.workers,
                      collate_fn=collate_skip_invalid)


def _save_state(out_dir: Path, model: VisualAD, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Head of ``epoch`` (1-based count of finished epochs) plus the optimiser, written atomically."""
    model.save_head(out_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors")
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "head": model.head_state_dict()}
    with atomic_path(out_dir / STATE_NAME) as temporary:
        torch.save(state, temporary)


def _load_state(out_dir: Path, model: VisualAD, optimizer: torch.optim.Optimizer) -> int:
    """Restore head and optimiser from ``out_dir``; returns the number of finished epochs."""
    path = out_dir / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {STATE_NAME} in {out_dir}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["head"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])


def train_step(model, images, masks, labels, optimizer, config: TrainConfig, device,
               inferer: Callable | None = None) -> dict[str, float]:
    """One optimisation step; returns the loss values.

    ``inferer(images, model)`` (e.g. MONAI's ``SimpleInferer``) runs the forward pass when given, else ``model(images)``.
    """
    with autocast(device, config.precision):
        outputs = model(images) if inferer is None else inferer(images, model)
    losses = visualad_losses(outputs, masks, labels)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    head = model.module if isinstance(model, DistributedDataParallel) else model
    for token in (head.backbone.anomaly_token, head.backbone.normal_token):
        torch.nn.utils.clip_grad_norm_([token], config.token_clip)
    optimizer.step()
    return {name: float(value.detach()) for name, value in losses.items()}


def _run_epoch(
    runner: torch.nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    rank: int,
    world: int,
    sample_weights: torch.Tensor | None,
    inferer: Callable | None = None,
) -> None:
    """One pass of the data at ``epoch``'s learning rates and seed; process 0 logs the mean losses."""
    _set_epoch_rates(optimizer, config, epoch)
    torch.manual_seed(config.seed * 1000 + epoch + rank)
    loader = _loader(dataset, config, epoch, world, rank, sample_weights)
    total = min(len(loader), config.max_steps or len(loader))
    sums, seen, epoch_start = {}, 0, time.perf_counter()
    bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", disable=rank != 0)
    for step, batch in enumerate(bar):
        if step >= total:
            break
        if batch is None:
            continue
        losses = train_step(runner, batch["image"].to(device), batch["mask"].to(device),
                            batch["label"].to(device), optimizer, config, device, inferer)
        seen += len(batch["label"])
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value
        bar.set_postfix(loss=f"{losses['total']:.3f}")
    elapsed = time.perf_counter() - epoch_start
    steps = max(1, total)
    if rank == 0:
        logger.info(
            "epoch %d/%d: loss %.4f (seg %.4f, image %.4f, contrast %.4f), %d images in %.1f s (%.2f img/s), "
            "lr tokens %.2e, %d unreadable skipped",
            epoch + 1, config.epochs, *(sums.get(k, float("nan")) / steps for k in ("total", "seg", "image", "contrast")),
            seen * world, elapsed, seen * world / max(elapsed, 1e-9), optimizer.param_groups[0]["lr"],
            getattr(dataset, "skipped", 0),
        )


def _training_record(
    provenance: dict | None, config: TrainConfig, started: float, device: torch.device, world: int
) -> dict:
    """What the final head records of its training: ``provenance``, the config, time, machine, versions."""
    return {
        **(provenance or {}),
        **dataclasses.asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus; "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}",
        "torch": torch.__version__,
        "processes": world,
    }


def train(
    model: VisualAD,
    dataset: Dataset,
    out_dir: Path,
    config: TrainConfig,
    device: torch.device,
    *,
    calibration_set: Dataset | None = None,
    resume: bool = False,
    provenance: dict | None = None,
    sample_weights: torch.Tensor | None = None,
    inferer: Callable | None = None,
) -> Path:
    """Train the head and write checkpoints into ``out_dir``.

    Args:
        model: VisualAD with a fresh (or resumed) head; moved to ``device``.
        dataset: training samples under the common sample contract.
        out_dir: receives ``checkpoints/epoch_NNN.safetensors``, ``train_state.pt``
            and the final ``head.safetensors`` (with the calibrated threshold).
        config: hyper-parameters.
        device: CPU or CUDA (bf16/fp16 autocast on CUDA by default).
        calibration_set: images for the F1-max threshold; ``dataset`` when None.
        resume: continue from ``out_dir/train_state.pt``.
        provenance: recorded in the head's config (data, layout, command).
        sample_weights: ``(len(dataset),)`` sampling weights (e.g.
            :func:`~visualad_med.datasets.class_balanced_weights`); ``None`` shuffles uniformly.
        inferer: runs each step's forward pass as ``inferer(images, model)`` (the bundle's
            ``train#inferer``, a ``SimpleInferer``); ``None``: ``model(images)``.

    Returns:
        Path of the final head.
    """
    rank, world = _distributed()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    optimizer = make_optimizer(model, config)
    start = _load_state(out_dir, model, optimizer) if resume else 0
    model.train()
    runner = DistributedDataParallel(model) if world > 1 else model
    started = time.perf_counter()
    for epoch in range(start, config.epochs):
        _run_epoch(runner, dataset, optimizer, config, device, epoch, rank, world, sample_weights, inferer)
        if rank == 0:
            _save_state(out_dir, model, optimizer, epoch + 1)
    if world > 1:
        dist.barrier()
    if rank != 0:
        return out_dir / FINAL_HEAD
    model.eval()
    model.set_threshold(calibrate_threshold(
        model, calibration_set or dataset, device, config.batch_size, config.calibration_images, config.precision
    ))
    model.record_training(_training_record(provenance, config, started, device, world))
    path = model.save_head(out_dir / FINAL_HEAD)
    logger.info("final head %s (threshold %.4f on the map, F1-max on the training set)", path, model.threshold)
    return path
