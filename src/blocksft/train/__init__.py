"""Training: :func:`blocksft.train.run.run_train` (LoRA + Trainer + DeepSpeed), merged exports, resume.

Its settings are :class:`blocksft.config.train.TrainConfig`. ``python -m blocksft.train`` is the
launcher entry point.
"""
