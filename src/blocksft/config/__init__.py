"""Configuration: every command's settings as a dataclass, light to import (no torch).

The command line builds its parser from these modules alone:

* :mod:`.flags`: the machinery (dataclass fields -> flags; defaults < YAML file < flags);
* :mod:`.train` (``TrainConfig``, the shipped recipes in ``recipes/`` and DeepSpeed files in
  ``deepspeed/``), :mod:`.objective` (objective names, ``ObjectiveOptions`` and their ranges),
  :mod:`.sampler` (``SamplerConfig``), :mod:`.eval` (``EvalConfig``), :mod:`.prepare`
  (``PrepareConfig``), :mod:`.generate` (``GenerateConfig``), :mod:`.merge` (``MergeConfig``),
  :mod:`.plot` (``PlotConfig``).

``blocksft demo``'s settings are :class:`blocksft.demo.config.DemoConfig`.
"""
