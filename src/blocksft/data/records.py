"""Record files: the reference's training-data format, validated, with a tokenizer sidecar.

A record file is exactly what the reference ``pt.py`` writes, ``torch.save`` of
``list[{"prompt_len": int, "full_ids": LongTensor}]``, so files interchange with the reference
scripts both ways. Beside it, ``<file>.meta.json`` records the tokenizer (name, vocabulary size and
digest, special token ids, chat-template digest), the prompt template, the counts and the command.
:func:`load_records` uses it to refuse a file made with another tokenizer; a file without one (made
by the reference) loads with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from blocksft.errors import BlocksftError
from blocksft.outputs import publish_new
from blocksft.special_tokens import EOT, token_id, tokenizer_mask_id

logger = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"
META_FORMAT = "blocksft-records"
META_FORMAT_VERSION = 1
_PREPARE_HINT = "blocksft prepare"


def meta_path(path: str | Path) -> Path:
    """The sidecar of a record file: ``<path>.meta.json``."""
    return Path(f"{path}{META_SUFFIX}")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """What identifies a tokenizer for record files: name, vocabulary size and digest, special ids.

    Returns:
        A JSON-friendly dict; ``chat_template_sha256`` is ``None`` without a chat template.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    template = getattr(tokenizer, "chat_template", None)
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "vocab_size": len(tokenizer),
        "vocab_sha256": _sha256_bytes(json.dumps(vocab, ensure_ascii=False).encode()),
        "special_token_ids": {
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
            "pad": tokenizer.pad_token_id,
            "mask": tokenizer_mask_id(tokenizer),
            "eot": token_id(tokenizer, EOT),
        },
        "chat_template_sha256": _sha256_bytes(str(template).encode()) if template else None,
    }


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        return int(value)
    return None


def _as_ids(value) -> torch.Tensor | None:
    if not isinstance(value, torch.Tensor) or value.dim() != 1:
        return None
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return None
    return value.long()


def _first_and_count(bad: torch.Tensor) -> tuple[int, int]:
    indices = bad.nonzero().flatten()
    return int(indices[0]), len(indices)


def validate_records(obj: Any, source: str | Path, *, max_len: int | None = None) -> list[dict]:
    """Check that ``obj`` is a list of records and normalise them.

    Args:
        obj: what ``torch.load`` returned (or records about to be saved).
        source: names the file in error messages.
        max_len: if given, every record must be at most this long.

    Returns:
        ``[{"prompt_len": int, "full_ids": LongTensor [L]}]`` in the same order.

    Raises:
        BlocksftError: not a list of such dicts, ``prompt_len`` outside ``[0, len)`` (which includes an
            empty answer), or a record longer than ``max_len``.
    """
    expected = "a list of {'prompt_len': int, 'full_ids': 1-D integer tensor} (blocksft prepare / pt.py)"
    if not isinstance(obj, list):
        raise BlocksftError(f"{source} holds a {type(obj).__name__}, not {expected}")
    if not obj:
        raise BlocksftError(f"{source} holds no records; re-run {_PREPARE_HINT} (did every row get dropped?)")
    records = []
    for i, record in enumerate(obj):
        if not isinstance(record, dict) or "prompt_len" not in record or "full_ids" not in record:
            what = f"keys {sorted(map(str, record))}" if isinstance(record, dict) else type(record).__name__
            raise BlocksftError(f"record {i} of {source} is not a record ({what}); expected {expected}")
        prompt_len, full_ids = _as_int(record["prompt_len"]), _as_ids(record["full_ids"])
        if prompt_len is None or full_ids is None:
            raise BlocksftError(
                f"record {i} of {source}: prompt_len {type(record['prompt_len']).__name__} / full_ids "
                f"{type(record['full_ids']).__name__}; expected {expected}"
            )
        records.append({"prompt_len": prompt_len, "full_ids": full_ids})
    lengths = torch.tensor([len(r["full_ids"]) for r in records])  # [N]
    prompt_lens = torch.tensor([r["prompt_len"] for r in records])  # [N]
    bad = (prompt_lens < 0) | (prompt_lens >= lengths)
    if bad.any():
        i, count = _first_and_count(bad)
        raise BlocksftError(
            f"{count} record(s) of {source} have prompt_len outside [0, len(full_ids)), i.e. no answer "
            f"tokens; e.g. record {i}: prompt_len {records[i]['prompt_len']} with {int(lengths[i])} tokens"
        )
    if max_len is not None and (lengths > max_len).any():
        i, count = _first_and_count(lengths > max_len)
        raise BlocksftError(
            f"{count} record(s) of {source} are longer than max_len {max_len} (e.g. record {i}: "
            f"{int(lengths[i])} tokens); raise max_len or re-run {_PREPARE_HINT} --max_len {max_len}"
        )
    return records


def _check_vocab_range(records: list[dict], vocab_size: int, source: str | Path, tokenizer_name: str) -> None:
    all_ids = torch.cat([r["full_ids"] for r in records])  # [sum L]
    if int(all_ids.min()) >= 0 and int(all_ids.max()) < vocab_size:
        return
    for i, record in enumerate(records):
        ids = record["full_ids"]
        bad = (ids < 0) | (ids >= vocab_size)
        if bad.any():
            raise BlocksftError(
                f"record {i} of {source} holds token id {int(ids[bad][0])}, outside the vocabulary of "
                f"{tokenizer_name} (size {vocab_size}); the file was made with another tokenizer: re-run "
                f"{_PREPARE_HINT} --model <the model you train> to rebuild it"
            )


def answer_lengths(records: list[dict]) -> list[int]:
    """Answer tokens of each record: ``len(full_ids) - prompt_len`` (``<|eot_id|>`` included)."""
    return [len(r["full_ids"]) - int(r["prompt_len"]) for r in records]


def records_sha256(records: list[dict]) -> str:
    """SHA-256 of the records' content (each ``prompt_len`` and its ids as int64), whatever file
    format or path they came from: two files with the same records have the same digest."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(int(record["prompt_len"]).to_bytes(8, "little", signed=True))
        ids = record["full_ids"].to(torch.int64)
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(ids.numpy().astype("<i8", copy=False).tobytes())
    return digest.hexdigest()


def check_no_mask_tokens(records: list[dict], mask_id: int, source: str | Path) -> None:
    """Refuse records holding the mask id: training would read it as noise, never as data.

    Raises:
        BlocksftError: naming the first such record, the position and whether it is in the prompt.
    """
    lengths = torch.tensor([len(r["full_ids"]) for r in records])  # [N]
    all_ids = torch.cat([r["full_ids"] for r in records])  # [sum L]
    hits = (all_ids == mask_id).nonzero().flatten()
    if not len(hits):
        return
    owner = torch.repeat_interleave(torch.arange(len(records)), lengths)  # [sum L]
    starts = torch.cumsum(lengths, 0) - lengths  # [N]
    first = int(hits[0])
    i = int(owner[first])
    position = first - int(starts[i])
    part = "answer" if position >= records[i]["prompt_len"] else "prompt"
    affected = len(torch.unique(owner[hits]))
    raise BlocksftError(
        f"record {i} of {source} holds the mask id {mask_id} at position {position} (in its {part}); "
        f"{affected} record(s) do. A mask in the data is read as noise, not text: rebuild the file with "
        f"`{_PREPARE_HINT}`, which refuses special-token text in rows, or drop those records"
    )


def read_meta(path: str | Path) -> dict | None:
    """The sidecar of record file ``path`` if there is one that describes this very file.

    A sidecar whose recorded digest differs from the file (the file was replaced since) is ignored
    with a warning.

    Raises:
        BlocksftError: the sidecar exists but is not ours or not valid JSON.
    """
    sidecar = meta_path(path)
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BlocksftError(
            f"sidecar {sidecar} cannot be read ({err}); delete it or re-run {_PREPARE_HINT}"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise BlocksftError(
            f"{sidecar} is not a blocksft record sidecar; delete it or re-run {_PREPARE_HINT}"
        )
    recorded = meta.get("records_sha256")
    if recorded and recorded != _sha256_file(Path(path)):
        logger.warning(
            "%s does not describe %s (the record file changed since it was written); ignoring it",
            sidecar,
            path,
        )
        return None
    return meta


def check_tokenizer(meta: dict, tokenizer, source: str | Path) -> None:
    """Refuse records made with a different tokenizer than ``tokenizer``.

    Vocabulary size, vocabulary digest and special token ids must match; a different chat template
    only warns (the ids are still valid, but prompts at evaluation will be rendered differently).

    Raises:
        BlocksftError: naming both tokenizers, their vocabulary sizes and the fix.
    """
    saved = meta.get("tokenizer") or {}
    current = tokenizer_fingerprint(tokenizer)
    differences = []
    if saved.get("vocab_size") != current["vocab_size"]:
        differences.append("vocabulary size")
    elif saved.get("vocab_sha256") and saved["vocab_sha256"] != current["vocab_sha256"]:
        differences.append("vocabulary")
    saved_ids = saved.get("special_token_ids") or {}
    for name, current_id in current["special_token_ids"].items():
        if name in saved_ids and saved_ids[name] != current_id:
            differences.append(f"{name} id {saved_ids[name]} vs {current_id}")
    if differences:
        model = current["name_or_path"] or "<the model you train>"
        raise BlocksftError(
            f"{source} was prepared with tokenizer {saved.get('name_or_path')!r} (vocab size "
            f"{saved.get('vocab_size')}), but the tokenizer in use is {current['name_or_path']!r} (vocab "
            f"size {current['vocab_size']}); they differ in {', '.join(differences)}. Re-run "
            f"`{_PREPARE_HINT} --model {model} --output {source} --overwrite` to rebuild it"
        )
    saved_template = saved.get("chat_template_sha256")
    if (
        saved_template
        and current["chat_template_sha256"]
        and saved_template != current["chat_template_sha256"]
    ):
        logger.warning(
            "%s was prepared with a different chat template than %s has; prompts at evaluation will not "
            "look like the training prompts",
            source,
            current["name_or_path"],
        )


def load_records(path: str | Path, *, tokenizer=None, max_len: int | None = None) -> list[dict]:
    """Read and validate a record file (ours or the reference's).

    Args:
        path: the ``.pt`` file.
        tokenizer: the tokenizer training will use: checked against the sidecar, and every id must
            lie inside its vocabulary.
        max_len: if given, every record must be at most this long.

    Returns:
        ``[{"prompt_len": int, "full_ids": LongTensor [L]}]``.

    Raises:
        BlocksftError: missing or unreadable file, not a list of records, a bad record, or a file
            made with another tokenizer.
    """
    path = Path(path)
    if not path.is_file():
        raise BlocksftError(
            f"record file {path} does not exist; create it with `{_PREPARE_HINT} --output {path}`"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike mean "not a record file"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BlocksftError(
            f"{path} is not a record file (torch.load failed: {first_line}); write it with {_PREPARE_HINT}"
        ) from err
    records = validate_records(obj, path, max_len=max_len)
    meta = read_meta(path)
    if meta is None:
        logger.warning(
            "%s has no sidecar %s (a reference-format file?): cannot check that it was made with the "
            "tokenizer you train with",
            path,
            meta_path(path).name,
        )
    if tokenizer is not None:
        if meta is not None:
            check_tokenizer(meta, tokenizer, path)
        _check_vocab_range(records, len(tokenizer), path, repr(getattr(tokenizer, "name_or_path", "")))
    elif meta is not None and isinstance((meta.get("tokenizer") or {}).get("vocab_size"), int):
        saved = meta["tokenizer"]
        _check_vocab_range(records, saved["vocab_size"], path, repr(saved.get("name_or_path")))
    return records


def _plain(record: dict) -> dict:
    full_ids = record["full_ids"]
    # A view into a larger tensor would drag the whole storage into the file.
    if full_ids.untyped_storage().nbytes() != full_ids.numel() * full_ids.element_size():
        full_ids = full_ids.clone()
    return {"prompt_len": record["prompt_len"], "full_ids": full_ids.contiguous()}


def save_records(
    records: list[dict], path: str | Path, meta: dict | None = None, *, overwrite: bool = True
) -> Path:
    """Write records as the reference does (``torch.save`` of the list) plus the sidecar, atomically.

    Both files are written into a temporary folder beside ``path`` and renamed into place when
    complete, so an interrupted run leaves no partial file. The temporary file has the final file
    name, so the archive inside is byte for byte what ``torch.save(records, path)`` writes.

    Args:
        records: ``[{"prompt_len": int, "full_ids": LongTensor}]`` (validated first).
        path: the ``.pt`` file.
        meta: JSON-friendly facts for the sidecar (see :func:`tokenizer_fingerprint`); the format tag,
            record count and the file's digest are added.
        overwrite: replace an existing file; otherwise a file that appeared at ``path`` meanwhile
            (another process) is an error and stays as it is.

    Returns:
        The path of the sidecar.
    """
    path = Path(path)
    records = [_plain(r) for r in validate_records(records, path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        staged = staging / path.name
        torch.save(records, staged)
        sidecar = {
            "format": META_FORMAT,
            "format_version": META_FORMAT_VERSION,
            **(meta or {}),
            "num_records": len(records),
            "records_sha256": _sha256_file(staged),
        }
        staged_meta = meta_path(staged)
        staged_meta.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if overwrite:
            # A stale sidecar must never sit beside the new file, not even for a moment.
            meta_path(path).unlink(missing_ok=True)
            os.replace(staged, path)
        else:
            publish_new(staged, path, "--output")
        os.replace(staged_meta, meta_path(path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta_path(path)
