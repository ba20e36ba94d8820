"""Record files: the reference format both ways, validation, and the tokenizer sidecar."""

import json
import logging

import pytest
import torch

from blocksft.data.records import (
    load_records,
    meta_path,
    save_records,
    tokenizer_fingerprint,
    validate_records,
)
from blocksft.errors import BlocksftError
from blocksft.tokenizer import _DEFAULT_CORPUS, build_tokenizer

RECORDS_LOGGER = "blocksft.data.records"


def records_of(*rows):
    return [{"prompt_len": p, "full_ids": torch.tensor(ids, dtype=torch.long)} for p, ids in rows]


SAMPLE = records_of((2, [0, 7, 8, 9, 5]), (3, [0, 7, 7, 10, 11, 5]))


def same(a, b):
    return len(a) == len(b) and all(
        x["prompt_len"] == y["prompt_len"] and x["full_ids"].equal(y["full_ids"]) for x, y in zip(a, b)
    )


def test_round_trip_and_bytes_equal_a_plain_torch_save(tmp_path, tokenizer):
    sidecar = save_records(SAMPLE, tmp_path / "data.pt", {"tokenizer": tokenizer_fingerprint(tokenizer)})
    assert sidecar == meta_path(tmp_path / "data.pt") == tmp_path / "data.pt.meta.json"
    assert same(load_records(tmp_path / "data.pt", tokenizer=tokenizer, max_len=6), SAMPLE)
    # What the reference pt.py writes for the same list, under the same file name.
    (tmp_path / "ref").mkdir()
    torch.save(SAMPLE, tmp_path / "ref" / "data.pt")
    assert (tmp_path / "data.pt").read_bytes() == (tmp_path / "ref" / "data.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.pt", "data.pt.meta.json", "ref"]


def test_views_are_saved_as_their_own_small_tensors(tmp_path):
    big = torch.arange(10_000)
    save_records([{"prompt_len": 1, "full_ids": big[5:9]}], tmp_path / "view.pt")
    assert (tmp_path / "view.pt").stat().st_size < 4000
    assert load_records(tmp_path / "view.pt")[0]["full_ids"].tolist() == [5, 6, 7, 8]


def test_reference_file_without_sidecar_loads_with_a_warning(tmp_path, tokenizer, caplog):
    torch.save(records_of((2, [0, 7, 8, 5]), (1, [0, 9, 5])), tmp_path / "MathQA_256.pt")
    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        loaded = load_records(tmp_path / "MathQA_256.pt", tokenizer=tokenizer)
    assert [r["prompt_len"] for r in loaded] == [2, 1]
    assert loaded[1]["full_ids"].tolist() == [0, 9, 5]
    assert "has no sidecar" in caplog.text


def test_integer_types_are_normalised(tmp_path):
    rows = [{"prompt_len": torch.tensor(1), "full_ids": torch.tensor([3, 4, 5], dtype=torch.int32)}]
    torch.save(rows, tmp_path / "ints.pt")
    (loaded,) = load_records(tmp_path / "ints.pt")
    assert type(loaded["prompt_len"]) is int and loaded["full_ids"].dtype == torch.long


BAD_CONTENTS = {
    "not a list": ({"prompt_len": 1, "full_ids": torch.tensor([1, 2])}, "holds a dict, not a list"),
    "empty list": ([], "holds no records"),
    "list of ints": ([1, 2, 3], "record 0 of .* is not a record"),
    "missing key": ([{"prompt_len": 1}], "record 0 .*keys \\['prompt_len'\\]"),
    "float ids": ([{"prompt_len": 1, "full_ids": torch.tensor([1.0, 2.0])}], "record 0 .*expected"),
    "2-d ids": ([{"prompt_len": 1, "full_ids": torch.tensor([[1, 2]])}], "record 0 .*expected"),
    "float prompt_len": ([{"prompt_len": 1.0, "full_ids": torch.tensor([1, 2])}], "prompt_len float"),
    "prompt_len past the end": (records_of((1, [1, 2]), (5, [1, 2, 3])), "1 record.*record 1: prompt_len 5"),
    "empty answer": (records_of((3, [1, 2, 3])), "no answer tokens; e.g. record 0: prompt_len 3 with 3"),
    "negative prompt_len": (records_of((-1, [1, 2])), "prompt_len -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_bad_contents_are_one_clear_error(case, tmp_path):
    obj, match = BAD_CONTENTS[case]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(BlocksftError, match=match):
        load_records(tmp_path / "bad.pt")


def test_missing_or_garbage_file(tmp_path):
    with pytest.raises(BlocksftError, match="does not exist; create it with `blocksft prepare"):
        load_records(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(BlocksftError, match="is not a record file"):
        load_records(tmp_path / "junk.pt")


def test_too_long_and_out_of_vocabulary_records(tmp_path, tokenizer):
    save_records(SAMPLE, tmp_path / "data.pt")
    with pytest.raises(BlocksftError, match="1 record\\(s\\) .* longer than max_len 5 \\(e.g. record 1: 6"):
        load_records(tmp_path / "data.pt", max_len=5)
    torch.save(records_of((1, [0, len(tokenizer), 5])), tmp_path / "oov.pt")
    with pytest.raises(BlocksftError, match=f"token id {len(tokenizer)}, outside the vocabulary"):
        load_records(tmp_path / "oov.pt", tokenizer=tokenizer)


def test_file_from_another_tokenizer_is_refused(tmp_path, tokenizer):
    small = build_tokenizer(vocab_size=300)
    small.name_or_path = "small-tokenizer"
    save_records(SAMPLE, tmp_path / "data.pt", {"tokenizer": tokenizer_fingerprint(small)})
    with pytest.raises(BlocksftError) as info:
        load_records(tmp_path / "data.pt", tokenizer=tokenizer)
    message = str(info.value)
    assert "'small-tokenizer' (vocab size 300)" in message
    assert f"vocab size {len(tokenizer)}" in message and "Re-run `blocksft prepare --model" in message


def test_same_size_different_vocabulary_is_refused(tmp_path):
    a = build_tokenizer(vocab_size=300)
    b = build_tokenizer(list(_DEFAULT_CORPUS) + ["zebra quartz jumps over the lazy fox " * 5], vocab_size=300)
    assert len(a) == len(b)
    save_records(SAMPLE, tmp_path / "data.pt", {"tokenizer": tokenizer_fingerprint(a)})
    with pytest.raises(BlocksftError, match="differ in vocabulary"):
        load_records(tmp_path / "data.pt", tokenizer=b)
    assert same(load_records(tmp_path / "data.pt", tokenizer=a), SAMPLE)


def test_other_chat_template_only_warns(tmp_path, caplog):
    a = build_tokenizer(vocab_size=300)
    save_records(SAMPLE, tmp_path / "data.pt", {"tokenizer": tokenizer_fingerprint(a)})
    a.chat_template = "{{ messages[0]['content'] }}"
    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        load_records(tmp_path / "data.pt", tokenizer=a)
    assert "different chat template" in caplog.text


def test_stale_sidecar_is_ignored_with_a_warning(tmp_path, caplog):
    small = build_tokenizer(vocab_size=300)
    save_records(SAMPLE, tmp_path / "data.pt", {"tokenizer": tokenizer_fingerprint(small)})
    torch.save(SAMPLE[:1], tmp_path / "data.pt")  # replaced by another tool; the sidecar stayed
    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        assert len(load_records(tmp_path / "data.pt", tokenizer=build_tokenizer(vocab_size=512))) == 1
    assert "does not describe" in caplog.text


def test_broken_sidecar_is_an_error(tmp_path):
    save_records(SAMPLE, tmp_path / "data.pt")
    meta_path(tmp_path / "data.pt").write_text("{broken")
    with pytest.raises(BlocksftError, match="cannot be read .* delete it or re-run"):
        load_records(tmp_path / "data.pt")
    meta_path(tmp_path / "data.pt").write_text(json.dumps({"something": "else"}))
    with pytest.raises(BlocksftError, match="not a blocksft record sidecar"):
        load_records(tmp_path / "data.pt")


def test_save_validates_first_and_replaces_atomically(tmp_path):
    with pytest.raises(BlocksftError, match="no answer tokens"):
        save_records(records_of((2, [1, 2])), tmp_path / "data.pt", {})
    assert list(tmp_path.iterdir()) == []
    save_records(SAMPLE, tmp_path / "data.pt", {"note": "first"})
    save_records(SAMPLE[:1], tmp_path / "data.pt", {"note": "second"})
    meta = json.loads(meta_path(tmp_path / "data.pt").read_text())
    assert meta["note"] == "second" and meta["num_records"] == 1 and meta["format"] == "blocksft-records"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.pt", "data.pt.meta.json"]


def test_validate_records_without_a_file():
    assert same(validate_records(SAMPLE, "memory"), SAMPLE)
    with pytest.raises(BlocksftError, match="memory holds a tuple"):
        validate_records(tuple(SAMPLE), "memory")
