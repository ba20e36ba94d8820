"""Evaluation: GSM8K / MATH accuracy of a checkpoint under semi-autoregressive block decoding.

* :mod:`.gsm8k`, :mod:`.math`: answer extraction and scoring (strings only);
* :mod:`.stats`: Wilson intervals and McNemar's paired test;
* :mod:`.results`: the JSONL rows, resume, per-rank shards and their merge, summaries, ``--compare``;
* :mod:`.runner`: prompts -> generation -> rows (single process or one shard per rank);
* :mod:`.grid`: the block-length grid table and heatmap;
* :mod:`.lm_eval_model`: an lm-evaluation-harness model class registered as ``blocksft``, and
  :mod:`.harness`, the harness's command line with it registered.

Its settings are :class:`blocksft.config.eval.EvalConfig` and
:class:`blocksft.config.sampler.SamplerConfig`.
"""
