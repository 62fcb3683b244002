"""Training the head on industrial data: losses, the loop, synthetic anomalies, augmentation, calibration."""

from .loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
