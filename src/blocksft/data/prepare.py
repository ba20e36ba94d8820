"""`blocksft prepare`: an instruction dataset -> a record file, as the reference ``pt.py`` makes it.

For each row in dataset order: skip it if its ``type`` contains ``--filter_type``; wrap its query in
the prompt template; render [user, assistant] with the model's chat template and remove the trailing
assistant header (checked, see :mod:`blocksft.data.prompts`); ``prompt_len`` is the token count of the
user-only render; drop (never truncate) samples longer than ``--max_len``; stop after
``--max_samples`` kept. Every kept sample is checked: ``full_ids[:prompt_len]`` must equal the
user-only ids.

Rows are rendered and tokenized in batches through ``datasets.map`` with the fast tokenizer, in
chunks sized so that no more rows are tokenized than ``--max_samples`` needs. Output: the reference
format plus a sidecar (:mod:`blocksft.data.records`)::

    blocksft prepare --output MathQA_256.pt --model GSAI-ML/LLaDA-8B-Instruct \\
        --dataset meta-math/MetaMathQA --split train --max_len 256 --max_samples 20000 --filter_type GSM
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import datasets
import torch

import blocksft
from blocksft.config.flags import config_to_dict
from blocksft.config.prepare import PrepareConfig
from blocksft.data.prepare_report import PrepareCounts, PrepareResult, write_histogram_plot
from blocksft.data.prompts import (
    chat_template_appends_header,
    encode_texts,
    load_prompt_template,
    render_conversation_texts,
    render_prompt_texts,
)
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.data.tasks import open_dataset, quiet_datasets, require_columns
from blocksft.errors import BlocksftError
from blocksft.families import family_of_folder
from blocksft.outputs import check_output_path, claim
from blocksft.progress import progress
from blocksft.special_tokens import (
    LLADA_TOKENS,
    require_mask_token,
    special_text_pattern,
    special_text_problem,
)
from blocksft.tokenizer import load_tokenizer

TYPE_FIELD = "type"


@dataclass
class _Mismatch:
    row: int
    prompt_ids: list[int]
    full_ids: list[int]


# ----- one batch of rows (runs inside datasets.map) -----


def _row_problem(query, response, query_field: str, response_field: str) -> str:
    for name, value in ((query_field, query), (response_field, response)):
        if value is None:
            return f"field {name!r} is missing"
        if not isinstance(value, str):
            return f"field {name!r} is a {type(value).__name__}, not text"
    if not response.strip():
        return f"field {response_field!r} is empty; every row needs an answer"
    return ""


def encode_batch(
    batch: dict[str, list],
    *,
    tokenizer,
    template: str,
    query_field: str,
    response_field: str,
    appends_header: bool,
    max_len: int,
    special_text=None,
) -> dict[str, list]:
    """Render and tokenize a batch of rows (the ``datasets.map`` function).

    The full conversations are encoded first; prompts only for the rows that fit ``max_len`` (a
    dropped row needs no ``prompt_len``), which saves a good part of the work on long data.

    Returns:
        Columns ``length`` (tokens of the full conversation), ``full_ids`` and ``prompt_len`` (rows
        that fit; ``[]`` and ``-1`` otherwise), ``boundary_ok`` (``full_ids[:prompt_len]`` equals
        the user-only ids), ``mismatch_prompt_ids`` (the user-only ids where it does not) and
        ``problem`` (why a row is unusable, ``""`` for good rows), ``special_text`` (why a row is not
        encoded: it holds a special token's text, found by the ``special_text`` pattern).
    """
    queries, responses = batch[query_field], batch[response_field]
    problems = [_row_problem(q, r, query_field, response_field) for q, r in zip(queries, responses)]
    specials = [
        ""
        if problem or special_text is None
        else special_text_problem({query_field: q, response_field: r}, special_text)
        for problem, q, r in zip(problems, queries, responses)
    ]
    good = [i for i, (problem, special) in enumerate(zip(problems, specials)) if not (problem or special)]
    full_texts = render_conversation_texts(
        tokenizer,
        [queries[i] for i in good],
        [responses[i] for i in good],
        template,
        appends_header=appends_header,
    )
    n = len(queries)
    out = {"length": [0] * n, "full_ids": [[]] * n, "prompt_len": [-1] * n, "boundary_ok": [False] * n}
    out["mismatch_prompt_ids"], out["problem"], out["special_text"] = [[]] * n, problems, specials
    fitting, full_text_of = [], dict(zip(good, full_texts))
    for i, full in zip(good, encode_texts(tokenizer, full_texts)):
        out["length"][i] = len(full)
        if len(full) <= max_len:
            out["full_ids"][i] = full
            fitting.append(i)
    prompt_texts = render_prompt_texts(tokenizer, [queries[i] for i in fitting], template)
    out["split_full_ids"] = [[]] * n
    tails = {}  # row -> answer text after its prompt, for rows whose tokens merge across the boundary
    for i, prompt_text, prompt in zip(fitting, prompt_texts, encode_texts(tokenizer, prompt_texts)):
        ok = out["full_ids"][i][: len(prompt)] == prompt
        out["prompt_len"][i], out["boundary_ok"][i] = len(prompt), ok
        out["mismatch_prompt_ids"][i] = [] if ok else prompt
        if not ok and full_text_of[i].startswith(prompt_text):
            tails[i] = full_text_of[i][len(prompt_text) :]
    # The prompt encoded alone, then the answer: the prompt gets exactly the ids it has at inference.
    for (i, _), answer in zip(tails.items(), encode_texts(tokenizer, list(tails.values()))):
        out["split_full_ids"][i] = out["mismatch_prompt_ids"][i] + answer
    return out


def _encoded_features():
    id_list = getattr(datasets, "List", datasets.Sequence)(datasets.Value("int32"))
    return datasets.Features(
        {
            "length": datasets.Value("int32"),
            "full_ids": id_list,
            "prompt_len": datasets.Value("int32"),
            "boundary_ok": datasets.Value("bool"),
            "mismatch_prompt_ids": id_list,
            "split_full_ids": id_list,
            "problem": datasets.Value("string"),
            "special_text": datasets.Value("string"),
        }
    )


# ----- the whole dataset -----


def _candidate_rows(dataset, filter_type: str, source: str) -> list[int]:
    if not filter_type:
        return list(range(len(dataset)))
    if TYPE_FIELD not in dataset.column_names:
        raise BlocksftError(
            f"--filter_type {filter_type!r} skips rows by their {TYPE_FIELD!r} field, but {source} has none "
            f'(its fields: {", ".join(dataset.column_names)}); pass --filter_type "" to keep every row'
        )
    types = dataset[TYPE_FIELD]
    return [i for i, t in enumerate(types) if not (isinstance(t, str) and filter_type in t)]


def _next_chunk_size(remaining: int, wanted: int, kept: int, scanned: int) -> int:
    """How many more candidate rows to tokenize to reach ``wanted`` kept samples (0 = all rows)."""
    if wanted == 0:
        return remaining
    keep_rate = kept / scanned if scanned else 1.0
    return min(remaining, math.ceil((wanted - kept) / max(keep_rate, 0.05) * 1.1) + 64)


def _encode_rows(subset, encode, config: PrepareConfig) -> dict[str, list]:
    num_proc = config.num_proc if config.num_proc > 1 and len(subset) > config.num_proc else None
    with quiet_datasets():  # progress is ours (per chunk), not a bar per map call
        mapped = subset.map(
            encode,
            batched=True,
            batch_size=config.batch_size,
            num_proc=num_proc,
            remove_columns=subset.column_names,
            features=_encoded_features(),
            keep_in_memory=True,
            # An explicit fingerprint: hashing the tokenizer for the cache would cost more than the work.
            new_fingerprint=f"blocksft-prepare-{uuid.uuid4().hex}",
        )
    return mapped.to_dict()


def _boundary_error(mismatches: list[_Mismatch], scanned: int, source: str, tokenizer) -> BlocksftError:
    examples = []
    for m in mismatches[:3]:
        start = next(
            (k for k, (a, b) in enumerate(zip(m.prompt_ids, m.full_ids)) if a != b),
            min(len(m.prompt_ids), len(m.full_ids)),
        )
        start = max(0, start - 2)
        prompt_tail = tokenizer.convert_ids_to_tokens(m.prompt_ids[start:])
        full_there = tokenizer.convert_ids_to_tokens(m.full_ids[start : len(m.prompt_ids) + 2])
        examples.append(f"row {m.row}: the prompt ends {prompt_tail}, the full text has {full_there}")
    return BlocksftError(
        f"{len(mismatches)} of {scanned} rows of {source}: the tokenizer encodes the prompt differently "
        f"when the answer follows it (tokens merge across the prompt/answer boundary), so prompt_len "
        f"would not mark where the answer starts; e.g. {'; '.join(examples)}. Use a tokenizer/template "
        "whose prompt ends at a token boundary, --on-boundary-mismatch split to encode prompt and answer "
        "apart, or --on-boundary-mismatch skip to drop such rows"
    )


@dataclass
class _Scan:
    """Walks the encoded rows in dataset order: drops, skips, keeps, and stops at ``max_samples``."""

    config: PrepareConfig
    records: list[dict] = field(default_factory=list)
    counts: PrepareCounts = field(default_factory=PrepareCounts)
    mismatches: list[_Mismatch] = field(default_factory=list)
    shortest: int | None = None
    scanned: int = 0
    last_row: int = -1

    @property
    def full(self) -> bool:
        return bool(self.config.max_samples) and len(self.records) >= self.config.max_samples

    @property
    def must_stop(self) -> bool:
        return self.full or bool(self.mismatches and self.config.on_boundary_mismatch == "error")

    def take(self, rows: list[int], columns: dict[str, list]) -> None:
        for k, row in enumerate(rows):
            if columns["problem"][k]:
                raise BlocksftError(f"row {row} of {self.config.dataset}: {columns['problem'][k]}")
            self.scanned, self.last_row = self.scanned + 1, row
            if columns["special_text"][k]:
                if self.config.on_special_text == "error":
                    raise BlocksftError(
                        f"row {row} of {self.config.dataset}: {columns['special_text'][k]}; remove it from "
                        "the data, or pass --on-special-text skip to drop such rows"
                    )
                self.counts.skipped_special_text += 1
                continue
            length, full_ids = columns["length"][k], columns["full_ids"][k]
            self.shortest = length if self.shortest is None else min(self.shortest, length)
            split_ids = columns["split_full_ids"][k]
            if length > self.config.max_len:
                self.counts.dropped_too_long += 1
                continue
            if not columns["boundary_ok"][k]:
                if self.config.on_boundary_mismatch != "split" or not split_ids:
                    self.counts.skipped_boundary_mismatch += 1
                    self.mismatches.append(_Mismatch(row, columns["mismatch_prompt_ids"][k], full_ids))
                    continue
                if len(split_ids) > self.config.max_len:
                    self.counts.dropped_too_long += 1
                    continue
                self.counts.split_at_boundary += 1
                full_ids = split_ids
            ids = torch.tensor(full_ids, dtype=torch.long)
            self.records.append({"prompt_len": columns["prompt_len"][k], "full_ids": ids})
            if self.full:
                return

    def finish(self, n_rows: int) -> PrepareCounts:
        self.counts.rows_read = self.last_row + 1 if self.full else n_rows
        self.counts.skipped_by_type = self.counts.rows_read - self.scanned
        self.counts.kept = len(self.records)
        return self.counts


def _nothing_kept_error(scan: _Scan, shortest_prompt) -> BlocksftError:
    config, counts, source = scan.config, scan.counts, scan.config.dataset
    if counts.rows_read == counts.skipped_by_type:
        return BlocksftError(
            f"every row of {source} ({counts.rows_read}) was skipped by --filter_type "
            f'{config.filter_type!r}; choose another filter, or --filter_type "" to keep every row'
        )
    if counts.dropped_too_long and shortest_prompt() > config.max_len:
        return BlocksftError(
            f"--max_len {config.max_len} is smaller than every prompt of {source} (the shortest prompt "
            f"has {shortest_prompt()} tokens); raise --max_len"
        )
    if counts.dropped_too_long:
        return BlocksftError(
            f"no row of {source} fits --max_len {config.max_len} (the shortest sample has {scan.shortest} "
            "tokens); raise --max_len"
        )
    return BlocksftError(
        f"no row of {source} was kept ({counts.skipped_boundary_mismatch} skipped for merging tokens "
        f"across the prompt/answer boundary, {counts.skipped_special_text} for special-token text); use "
        "another tokenizer or template, or clean the data"
    )


def build_records(dataset, tokenizer, config: PrepareConfig, template: str | None = None) -> PrepareResult:
    """Turn the rows of ``dataset`` into records (nothing is written).

    Args:
        dataset: a ``datasets.Dataset`` with the query and response fields (and ``type`` when
            ``config.filter_type`` is set).
        tokenizer: the chat tokenizer.
        config: the settings (fields, filter, ``max_len``, ``max_samples``, batching).
        template: the prompt template text (default: resolved from ``config.prompt_template``).

    Returns:
        The records in dataset order, and the counts up to the row where ``max_samples`` was reached.

    Raises:
        BlocksftError: missing fields, a bad row, a template that does not end as expected, tokens
            merging across the prompt/answer boundary (unless skipped), or nothing kept.
    """
    template = load_prompt_template(config.prompt_template) if template is None else template
    require_columns(
        dataset,
        [config.query_field, config.response_field],
        config.dataset,
        flag_hint="; choose the fields with --query-field and --response-field",
    )
    candidates = _candidate_rows(dataset, config.filter_type, config.dataset)
    texts = dataset.select_columns([config.query_field, config.response_field])
    encode = partial(
        encode_batch,
        tokenizer=tokenizer,
        template=template,
        query_field=config.query_field,
        response_field=config.response_field,
        appends_header=chat_template_appends_header(tokenizer),
        max_len=config.max_len,
        special_text=special_text_pattern(tokenizer),
    )
    scan = _Scan(config)
    # Chunks of at most a tenth of the rows (10,000 at least), so that progress shows on long data.
    most = max(10_000, len(candidates) // 10)
    with progress(len(candidates), "tokenizing", unit="row") as bar:
        while scan.scanned < len(candidates) and not scan.must_stop:
            size = _next_chunk_size(
                len(candidates) - scan.scanned, config.max_samples, len(scan.records), scan.scanned
            )
            rows = candidates[scan.scanned : scan.scanned + min(size, most)]
            before = scan.scanned
            scan.take(rows, _encode_rows(texts.select(rows), encode, config))
            bar.update(scan.scanned - before)
    counts = scan.finish(len(dataset))
    if scan.mismatches and config.on_boundary_mismatch == "error":
        raise _boundary_error(scan.mismatches, scan.scanned, config.dataset, tokenizer)
    if not scan.records:

        def shortest_prompt() -> int:  # prompts of dropped rows were never encoded: encode a sample
            queries = texts.select(candidates[: min(scan.scanned, 2000)])[config.query_field]
            return min(map(len, encode_texts(tokenizer, render_prompt_texts(tokenizer, queries, template))))

        raise _nothing_kept_error(scan, shortest_prompt)
    return PrepareResult(records=scan.records, counts=counts)


# ----- the command -----


def _check_output(output: Path, overwrite: bool) -> None:
    check_output_path(output, "--output", kind="file")
    if output.exists() and not overwrite:
        raise BlocksftError(f"--output {output} already exists; pass --overwrite to replace it")


def build_meta(config: PrepareConfig, tokenizer, template: str, counts: PrepareCounts, command: str | None):
    """The sidecar's contents (see :mod:`blocksft.data.records`)."""
    return {
        "blocksft_version": blocksft.__version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt_template": template,
        "chat_template_appends_header": chat_template_appends_header(tokenizer),
        "counts": vars(counts).copy(),
        "config": config_to_dict(config),
    }


def run_prepare(config: PrepareConfig, *, tokenizer=None, command: str | None = None) -> PrepareResult:
    """Preprocess ``config.dataset`` into ``config.output`` (+ sidecar, + PNG with ``config.plot``).

    Args:
        config: the settings.
        tokenizer: use this tokenizer instead of loading ``config.model``.
        command: the command line, recorded in the sidecar.

    Returns:
        The records, counts and written paths.

    Raises:
        BlocksftError: any bad input; nothing is written then.
    """
    started = time.perf_counter()
    output = Path(config.output)
    _check_output(output, config.overwrite)
    template = load_prompt_template(config.prompt_template)
    # One writer per output: a second run on the same file stops here instead of racing this one.
    with claim(output.with_name(f".{output.name}.lock"), f"--output {output}"):
        if tokenizer is None:
            tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        # The family of a local checkpoint names its own mask token when the tokenizer lacks it.
        family = family_of_folder(config.model)
        names = family.tokens if family else LLADA_TOKENS
        require_mask_token(tokenizer, "--model", config.model, names)
        dataset = open_dataset(config.dataset, config.split, config.dataset_config)
        result = build_records(dataset, tokenizer, config, template)
        meta = build_meta(config, tokenizer, template, result.counts, command)
        result.sidecar = save_records(result.records, output, meta, overwrite=config.overwrite)
        result.output = output
        if config.plot:
            result.plot = write_histogram_plot(result.records, config.block_size, Path(f"{output}.png"))
    result.seconds = time.perf_counter() - started
    return result
