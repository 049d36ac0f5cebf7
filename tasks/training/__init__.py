"""Training: contrastive pretraining and unified fine-tuning of an :class:`~model.m3.M3Model`."""

from tasks.training.checkpoint import latest_checkpoint
from tasks.training.config import TrainConfig
from tasks.training.contrastive import train
from tasks.training.data import TrainExample, examples_from_rows

__all__ = ["TrainConfig", "TrainExample", "examples_from_rows", "latest_checkpoint", "train"]
