"""Data: preprocessing into record files, prompt rendering, record I/O, evaluation tasks.

* :mod:`blocksft.data.prompts`: the prompt template and chat rendering (no torch).
* :mod:`blocksft.data.records`: the record file format, its validation and tokenizer sidecar.
* :mod:`blocksft.data.prepare`: ``blocksft prepare`` (dataset rows -> records).
* :mod:`blocksft.data.tasks`: datasets from the hub or local files; GSM8K and MATH problems.

Import the submodules directly; this package imports nothing heavy.
"""
