"""Training: :class:`TrainConfig` and :func:`run_train` (LoRA + Trainer + DeepSpeed), merged checkpoints.

Light on import (the command line builds its flags from :class:`TrainConfig`); the Trainer, PEFT
and torch load with :func:`run_train`. ``python -m blocksft.train`` is the launcher entry point.
"""

from .config import TrainConfig

__all__ = ["TrainConfig", "merge_adapter", "run_train"]


def __getattr__(name):
    if name == "run_train":
        from .run import run_train

        return run_train
    if name == "merge_adapter":
        from .checkpoint import merge_adapter

        return merge_adapter
    raise AttributeError(f"module 'blocksft.train' has no attribute {name!r}")
