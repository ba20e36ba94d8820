"""Data: preprocessing into record files, prompt rendering, record I/O, evaluation tasks.

* :mod:`blocksft.data.prompts`: the prompt template and chat rendering.
* :mod:`blocksft.data.records`: the record file format, its validation and tokenizer sidecar.
* :mod:`blocksft.data.prepare`: ``blocksft prepare`` (dataset rows -> records), and
  :mod:`blocksft.data.prepare_report`: what it made (counts, result) and its histograms.
* :mod:`blocksft.data.tasks`: datasets from the hub or local files; GSM8K and MATH problems.

Import the submodules directly; ``blocksft prepare``'s settings are
:class:`blocksft.config.prepare.PrepareConfig`.
"""
