"""`blocksft prepare`: exact records on hand-made rows, the chat-template checks, bad input, speed path."""

import json
import os
import re
import subprocess
import sys

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from blocksft.bench.prepare import default_data
from blocksft.bench.prepare import main as bench_main
from blocksft.cli import build_parser
from blocksft.cli import main as cli_main
from blocksft.config.prepare import ALPACA_PROMPT, PrepareConfig
from blocksft.data.prepare import build_records, run_prepare
from blocksft.data.prepare_report import (
    PrepareCounts,
    PrepareResult,
    blocks_per_answer,
    format_summary,
    length_bins,
)
from blocksft.data.prompts import (
    chat_template_appends_header,
    encode_texts,
    load_prompt_template,
    render_prompt_ids,
    strip_assistant_header,
)
from blocksft.data.records import load_records
from blocksft.data.tasks import open_dataset
from blocksft.errors import BlocksftError
from blocksft.special_tokens import BOS, END_HEADER, EOT, START_HEADER
from blocksft.tokenizer import _DEFAULT_CORPUS, ASSISTANT_HEADER, LLADA_CHAT_TEMPLATE, build_tokenizer

WRAPPER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{}\n\n### Response: Let's think step by step."
)

# type, query, response. Rows 2 and 5 are GSM (skipped), row 3 is far too long (dropped).
ROWS = [
    {"type": "MATH_AnsAug", "query": "What is 2+3?", "response": "2+3 = 5.\nThe answer is: 5"},
    {"type": "GSM_Rephrased", "query": "Tom has 3 apples.", "response": "He has 3.\nThe answer is: 3"},
    {"type": "MATH_SV", "query": "Count to many.", "response": " ".join(["one two three"] * 60)},
    {"type": "MATH_FOBAR", "query": "Compute 7-4.", "response": "7-4 = 3.\nThe answer is: 3"},
    {"type": "GSM_AnsAug", "query": "Ann has 2 pens.", "response": "She has 2.\nThe answer is: 2"},
    {"type": "MATH_Rephrased", "query": "What is 1+1?", "response": "1+1 = 2.\nThe answer is: 2"},
]

# The conditional Llama-3 template (the header only with add_generation_prompt), as dLLM ships it.
CONDITIONAL_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def config_for(rows_file, tmp_path, model_dir, **overrides):
    values = dict(output=str(tmp_path / "out.pt"), model=str(model_dir), dataset=str(rows_file), max_len=120)
    values.update(overrides)
    return PrepareConfig(**values)


def expected_ids(tokenizer, pieces):
    """Ids of a render written out by hand: special tokens by name, text pieces encoded one by one."""
    ids = []
    for piece in pieces:
        if piece in (BOS, START_HEADER, END_HEADER, EOT):
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        else:
            ids += tokenizer.backend_tokenizer.encode(piece, add_special_tokens=False).ids
    return ids


def expected_record(tokenizer, query, response):
    prompt = [BOS, START_HEADER, "user", END_HEADER, "\n\n" + WRAPPER.format(query), EOT]
    prompt += [START_HEADER, "assistant", END_HEADER]
    prompt_ids = expected_ids(tokenizer, prompt + ["\n\n"])
    full_ids = expected_ids(tokenizer, prompt + ["\n\n" + response, EOT])
    return full_ids, len(prompt_ids)


# ----- the hand-made rows -----


def test_hand_made_rows_give_exact_records(rows_file, tmp_path, model_dir, tokenizer):
    result = run_prepare(config_for(rows_file, tmp_path, model_dir, max_samples=2))

    assert result.counts == PrepareCounts(rows_read=4, skipped_by_type=1, dropped_too_long=1, kept=2)
    assert len(result.records) == 2
    for record, row in zip(result.records, [ROWS[0], ROWS[3]]):
        full_ids, prompt_len = expected_record(tokenizer, row["query"], row["response"])
        assert record["prompt_len"] == prompt_len
        assert record["full_ids"].tolist() == full_ids
        assert record["full_ids"].dtype == torch.long
    # The special tokens sit where the template puts them: BOS 0, start-header 3, end-header 4, EoT 5.
    first = result.records[0]["full_ids"].tolist()
    assert first[:2] == [0, 3] and first[-1] == 5
    prompt_len = result.records[0]["prompt_len"]
    assert tokenizer.decode(first[prompt_len:]) == ROWS[0]["response"] + EOT
    assert tokenizer.decode(first[:prompt_len]).endswith(ASSISTANT_HEADER)


def test_special_token_text_in_a_row_is_refused_or_skipped(tmp_path, model_dir, tokenizer, capsys):
    rows = [
        ROWS[0],
        {"type": "MATH_SV", "query": "Why <|eot_id|>?", "response": "2+3 = 5."},
        {"type": "MATH_SV", "query": "What is 1+4?", "response": "<|mdm_mask|> = 5.\nThe answer is: 5"},
        ROWS[3],
    ]
    rows_file = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(BlocksftError, match=r"row 1 of .*: field 'query' holds '<\|eot_id\|>'"):
        run_prepare(config_for(rows_file, tmp_path, model_dir))
    assert not (tmp_path / "out.pt").exists()
    result = run_prepare(config_for(rows_file, tmp_path, model_dir, on_special_text="skip"))
    assert result.counts.skipped_special_text == 2 and result.counts.kept == 2
    assert [r["full_ids"].tolist() for r in result.records] == [
        expected_record(tokenizer, row["query"], row["response"])[0] for row in (ROWS[0], ROWS[3])
    ]
    ids = torch.cat([r["full_ids"] for r in result.records])
    assert (ids == 2).sum() == 0 and (ids == 5).sum() == 4  # no mask; EoT only where the template puts it
    assert "skipped: special text" in format_summary(result, config_for(rows_file, tmp_path, model_dir))


def test_max_samples_keeps_the_first_rows_in_order(rows_file, tmp_path, model_dir, tokenizer):
    everything = run_prepare(config_for(rows_file, tmp_path, model_dir, max_samples=0))
    assert everything.counts == PrepareCounts(rows_read=6, skipped_by_type=2, dropped_too_long=1, kept=3)
    kept_rows = [ROWS[0], ROWS[3], ROWS[5]]
    for record, row in zip(everything.records, kept_rows):
        assert record["full_ids"].tolist() == expected_record(tokenizer, row["query"], row["response"])[0]

    one = build_records_from(rows_file, tokenizer, max_samples=1)
    assert one.counts == PrepareCounts(rows_read=1, skipped_by_type=0, dropped_too_long=0, kept=1)
    assert one.records[0]["full_ids"].equal(everything.records[0]["full_ids"])


def build_records_from(rows_file, tokenizer, **overrides):
    config = PrepareConfig(dataset=str(rows_file), **{"max_len": 120, **overrides})
    return build_records(open_dataset(str(rows_file)), tokenizer, config)


def test_every_answer_span_ends_with_eot_and_holds_no_header(rows_file, tokenizer):
    result = build_records_from(rows_file, tokenizer, max_samples=0, filter_type="", max_len=4096)
    assert result.counts.kept == 6
    eot, start_header = tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(START_HEADER)
    for record in result.records:
        answer = record["full_ids"][record["prompt_len"] :].tolist()
        assert answer[-1] == eot and answer.count(eot) == 1
        assert start_header not in answer


def test_file_loads_with_torch_load_as_the_reference_reads_it(rows_file, tmp_path, model_dir):
    result = run_prepare(config_for(rows_file, tmp_path, model_dir, max_samples=0))
    data = torch.load(tmp_path / "out.pt", weights_only=True)
    assert isinstance(data, list) and len(data) == 3
    for item, record in zip(data, result.records):
        assert set(item) == {"prompt_len", "full_ids"}
        assert type(item["prompt_len"]) is int
        assert item["full_ids"].dtype == torch.long and item["full_ids"].dim() == 1
        assert item["full_ids"].equal(record["full_ids"]) and item["prompt_len"] == record["prompt_len"]
        # What the reference trainer does with it: the answer span after prompt_len.
        assert len(item["full_ids"][item["prompt_len"] :]) > 0


def test_sidecar_records_tokenizer_template_counts_and_command(rows_file, tmp_path, model_dir, tokenizer):
    code = cli_main(["prepare", *flags(rows_file, tmp_path, model_dir), "--max_samples", "2"])
    assert code == 0
    meta = json.loads((tmp_path / "out.pt.meta.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == len(tokenizer)
    assert meta["tokenizer"]["special_token_ids"] == {"bos": 0, "eos": 1, "pad": 1, "mask": 2, "eot": 5}
    assert meta["tokenizer"]["name_or_path"] == str(model_dir)
    assert len(meta["tokenizer"]["chat_template_sha256"]) == 64
    assert meta["prompt_template"] == ALPACA_PROMPT
    assert meta["counts"] == {
        "rows_read": 4,
        "skipped_by_type": 1,
        "dropped_too_long": 1,
        "skipped_boundary_mismatch": 0,
        "split_at_boundary": 0,
        "skipped_special_text": 0,
        "kept": 2,
    }
    assert meta["command"].startswith("blocksft prepare --output")
    assert meta["blocksft_version"] and meta["num_records"] == 2


def flags(rows_file, tmp_path, model_dir):
    return ["--output", str(tmp_path / "out.pt"), "--model", str(model_dir), "--dataset", str(rows_file)]


def test_command_line_writes_the_same_records_and_a_summary(rows_file, tmp_path, model_dir, tokenizer):
    env_cache = str(tmp_path / "hf_cache")
    out = subprocess.run(
        [sys.executable, "-m", "blocksft", "prepare", *flags(rows_file, tmp_path, model_dir)]
        + ["--max-len", "120", "--max_samples", "2", "--filter_type", "GSM", "--plot"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_DATASETS_CACHE": env_cache},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for line in ("rows read", "skipped by type", "dropped as too long", "kept", "blocks per answer"):
        assert line in out.stdout
    data = torch.load(tmp_path / "out.pt", weights_only=True)
    assert [d["full_ids"].tolist() for d in data] == [
        expected_record(tokenizer, row["query"], row["response"])[0] for row in (ROWS[0], ROWS[3])
    ]
    assert (tmp_path / "out.pt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_failure_exits_nonzero_with_one_line(tmp_path, model_dir):
    out = subprocess.run(
        [sys.executable, "-m", "blocksft", "prepare", *flags(tmp_path / "absent.jsonl", tmp_path, model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"blocksft prepare: error: --dataset {tmp_path / 'absent.jsonl'}: no such file"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_both_flag_spellings_and_the_reference_defaults():
    parser = build_parser()
    a = parser.parse_args(["prepare", "--max_len", "64", "--max_samples", "5", "--filter_type", ""])
    b = parser.parse_args(["prepare", "--max-len", "64", "--max-samples", "5", "--filter-type", ""])
    assert (
        (a.max_len, a.max_samples, a.filter_type) == (b.max_len, b.max_samples, b.filter_type) == (64, 5, "")
    )
    defaults = PrepareConfig()
    assert (defaults.output, defaults.model, defaults.dataset, defaults.split) == (
        "MathQA_256.pt",
        "GSAI-ML/LLaDA-8B-Instruct",
        "meta-math/MetaMathQA",
        "train",
    )
    assert (defaults.max_len, defaults.max_samples, defaults.filter_type) == (256, 20000, "GSM")
    assert (defaults.query_field, defaults.response_field, defaults.prompt_template) == (
        "query",
        "response",
        ALPACA_PROMPT,
    )


def test_two_processes_give_the_same_records(tmp_path, tokenizer):
    rows = [dict(row, query=f"{row['query']} (variant {i})") for i in range(6) for row in ROWS]
    rows_file = write_jsonl(tmp_path / "many.jsonl", rows)
    one = build_records_from(rows_file, tokenizer, max_samples=0, batch_size=4)
    two = build_records_from(rows_file, tokenizer, max_samples=0, batch_size=4, num_proc=2)
    assert one.counts == two.counts and one.counts.kept == 18
    assert all(a["full_ids"].equal(b["full_ids"]) for a, b in zip(one.records, two.records))


def test_chunks_stop_at_max_samples_in_order(tmp_path, tokenizer):
    # Many rows, few wanted: the count of rows read must stop at the row that filled the quota.
    rows = [dict(ROWS[i % 6], query=f"Question {i}?") for i in range(120)]
    rows_file = write_jsonl(tmp_path / "many.jsonl", rows)
    result = build_records_from(rows_file, tokenizer, max_samples=7, batch_size=8)
    kept_rows = [i for i in range(120) if i % 6 in (0, 3, 5)][:7]
    assert result.counts.rows_read == kept_rows[-1] + 1 and result.counts.kept == 7
    for record, i in zip(result.records, kept_rows):
        full_ids = expected_record(tokenizer, f"Question {i}?", ROWS[i % 6]["response"])[0]
        assert record["full_ids"].tolist() == full_ids


# ----- chat templates -----


def tokenizer_with_template(template, base=None):
    tok = base if base is not None else build_tokenizer()
    tok.chat_template = template
    return tok


def test_template_classification():
    assert chat_template_appends_header(tokenizer_with_template(LLADA_CHAT_TEMPLATE)) is True
    assert chat_template_appends_header(tokenizer_with_template(CONDITIONAL_TEMPLATE)) is False
    appends_eos = LLADA_CHAT_TEMPLATE.replace("{{ '<|start_header_id|>assistant", "{{ '<|endoftext|>")
    appends_eos = appends_eos.replace("<|end_header_id|>\\n\\n' }}", "' }}", 1)
    with pytest.raises(BlocksftError, match="ends a conversation with"):
        chat_template_appends_header(tokenizer_with_template(appends_eos))
    with pytest.raises(BlocksftError, match="no chat template"):
        chat_template_appends_header(tokenizer_with_template(None))


def test_strip_assistant_header_checks_before_cutting():
    assert strip_assistant_header("abc<|eot_id|>" + ASSISTANT_HEADER, True) == "abc<|eot_id|>"
    assert strip_assistant_header("abc<|eot_id|>", False) == "abc<|eot_id|>"
    with pytest.raises(BlocksftError, match="not the assistant header"):
        strip_assistant_header("abc<|eot_id|>" + "x" * 47, True)


def test_conditional_template_gives_the_same_records(rows_file, tokenizer):
    llada = build_records_from(rows_file, tokenizer, max_samples=0)
    conditional = build_records_from(rows_file, tokenizer_with_template(CONDITIONAL_TEMPLATE), max_samples=0)
    assert [r["prompt_len"] for r in llada.records] == [r["prompt_len"] for r in conditional.records]
    assert all(a["full_ids"].equal(b["full_ids"]) for a, b in zip(llada.records, conditional.records))


def test_render_prompt_ids_is_the_prompt_of_the_records(rows_file, tokenizer):
    result = build_records_from(rows_file, tokenizer, max_samples=1)
    ids = render_prompt_ids(tokenizer, ROWS[0]["query"])
    assert ids == result.records[0]["full_ids"][: result.records[0]["prompt_len"]].tolist()
    assert tokenizer.decode(ids).endswith(ASSISTANT_HEADER)


def test_encode_texts_equals_the_tokenizer_call(tokenizer):
    texts = ["<|startoftext|>Hello 12 world\n\n", "x<|eot_id|>y", "  spaced  out  "]
    assert encode_texts(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_prompt_template_from_text_or_file(tmp_path):
    assert load_prompt_template("Q: {query}\nA:") == "Q: {query}\nA:"
    path = tmp_path / "template.txt"
    path.write_text("Solve: {query}\n")
    assert load_prompt_template(str(path)) == "Solve: {query}"
    path.write_text("no slot here\n")
    with pytest.raises(BlocksftError, match="no \\{query\\} slot"):
        load_prompt_template(str(path))


def test_custom_prompt_template_and_fields(tmp_path, tokenizer):
    rows = [{"question": "What is 2+3?", "answer": "5"}]
    rows_file = write_jsonl(tmp_path / "qa.jsonl", rows)
    result = build_records_from(
        rows_file,
        tokenizer,
        query_field="question",
        response_field="answer",
        filter_type="",
        prompt_template="Q: {query}",
    )
    prompt = [BOS, START_HEADER, "user", END_HEADER, "\n\nQ: What is 2+3?", EOT, START_HEADER, "assistant"]
    assert result.records[0]["full_ids"].tolist() == expected_ids(
        tokenizer, prompt + [END_HEADER, "\n\n5", EOT]
    )


# ----- bad input: one clear error, exit code 2, nothing written -----

BAD_ROWS = {
    "missing field": ([{"type": "MATH", "question": "q", "response": "r"}], [], "no field 'query'"),
    "empty response": ([dict(ROWS[0]), dict(ROWS[3], response="  ")], [], "row 1 of .*'response' is empty"),
    "null response": ([dict(ROWS[0], response=None)], [], "row 0 of .*'response' is missing"),
    "no type field": ([{"query": "q", "response": "r"}], [], '--filter_type ""'),
    "max_len below every prompt": (ROWS, ["--max_len", "10"], "smaller than every prompt"),
    "bad prompt template": (ROWS, ["--prompt-template", "no slot"], "no \\{query\\} slot"),
    "everything filtered": ([ROWS[1]], [], "every row .* was skipped by --filter_type"),
}


def run_cli_expecting_error(capsys, args, tmp_path, match):
    code = cli_main(["prepare", *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2
    # One line (progress bars aside), and it names the problem.
    assert len(errors) == 1 and errors[0].startswith("blocksft prepare: error: "), err
    assert re.search(match, errors[0]), err
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(("out.pt", ".out.pt"))]
    return leftovers


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_rows(case, tmp_path, model_dir, capsys):
    rows, extra, match = BAD_ROWS[case]
    rows_file = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert (
        run_cli_expecting_error(capsys, flags(rows_file, tmp_path, model_dir) + extra, tmp_path, match) == []
    )


@pytest.mark.parametrize(
    "content, match",
    [(None, "no such file"), ("", "empty file"), ("{not json at all\n", "cannot read")],
    ids=["missing", "empty", "garbage"],
)
def test_unreadable_dataset(content, match, tmp_path, model_dir, capsys):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    args = flags(path, tmp_path, model_dir)
    assert run_cli_expecting_error(capsys, args, tmp_path, match) == []


def test_template_that_does_not_end_as_expected(rows_file, tmp_path, tokenizer, capsys):
    folder = tmp_path / "odd_tokenizer"
    odd = tokenizer_with_template(LLADA_CHAT_TEMPLATE.replace("assistant<|end_header_id|>", "bot|>"))
    odd.save_pretrained(folder)
    args = flags(rows_file, tmp_path, folder)
    assert run_cli_expecting_error(capsys, args, tmp_path, "ends a conversation with") == []


def test_existing_output_needs_overwrite(rows_file, tmp_path, model_dir, capsys):
    (tmp_path / "out.pt").write_bytes(b"precious")
    args = flags(rows_file, tmp_path, model_dir)
    run_cli_expecting_error(capsys, args, tmp_path, "already exists; pass --overwrite")
    assert (tmp_path / "out.pt").read_bytes() == b"precious"
    assert cli_main(["prepare", *args, "--overwrite"]) == 0
    assert len(torch.load(tmp_path / "out.pt", weights_only=True)) == 3


def test_tokens_merging_across_the_boundary_are_reported_or_skipped(tmp_path, model_dir, capsys):

    # Learns "\n\n" as one token: the prompt ends with it, but "\n\nThe" splits as "\n", "\n", "The".
    merging = build_tokenizer(list(_DEFAULT_CORPUS) + ["x\n\n"] * 50, 300)
    rows = [
        {"query": "a", "response": "5"},
        {"query": "b", "response": "The answer is 5"},
        {"query": "c", "response": "6"},
        {"query": "d", "response": "So 6"},
    ]
    rows_file = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(BlocksftError, match=r"2 of 4 rows .* merge across .* e\.g\. row 1: .*row 3"):
        build_records_from(rows_file, merging, filter_type="", max_len=4096, on_boundary_mismatch="error")
    # Default: those rows are encoded prompt-then-answer, so the prompt has its inference-time ids.
    split = build_records_from(rows_file, merging, filter_type="", max_len=4096)
    assert split.counts.kept == 4 and split.counts.split_at_boundary == 2
    for row, record in zip(rows, split.records):
        prompt = render_prompt_ids(merging, row["query"])
        answer = merging(row["response"] + EOT, add_special_tokens=False)["input_ids"]
        assert record["prompt_len"] == len(prompt)
        assert record["full_ids"].tolist() == prompt + answer
    assert "kept, split at boundary" in format_summary(split, PrepareConfig())
    skipped = build_records_from(
        rows_file, merging, filter_type="", max_len=4096, on_boundary_mismatch="skip"
    )
    assert skipped.counts.kept == 2 and skipped.counts.skipped_boundary_mismatch == 2
    assert "skipped: boundary merge" in format_summary(skipped, PrepareConfig())


# ----- summary -----


def test_histograms_count_exactly():
    assert length_bins([1, 2, 3, 10], bins=3) == [(1, 4, 3), (5, 8, 0), (9, 12, 1)]
    assert length_bins([7, 7], bins=10) == [(7, 7, 2)]
    assert blocks_per_answer([1, 32, 33, 64, 65, 100], block_size=32) == [(1, 2), (2, 2), (3, 1), (4, 1)]


def test_summary_lists_counts_and_both_histograms():
    records = [{"prompt_len": 3, "full_ids": torch.arange(3 + n)} for n in (10, 40, 70)]
    counts = PrepareCounts(rows_read=9, skipped_by_type=4, dropped_too_long=2, kept=3)
    text = format_summary(PrepareResult(records=records, counts=counts), PrepareConfig(block_size=32))
    assert "rows read" in text and " 9" in text
    assert "answer length (tokens, <|eot_id|> included): min 10, median 40, max 70" in text
    assert "blocks per answer (block size 32):" in text
    assert "  1  " in text and "  3  " in text


# ----- the rest of the pipeline -----


def test_prepared_file_passes_the_training_reader(rows_file, tmp_path, model_dir):
    result = run_prepare(config_for(rows_file, tmp_path, model_dir, max_samples=0))
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    loaded = load_records(tmp_path / "out.pt", tokenizer=reloaded, max_len=120)
    assert all(a["full_ids"].equal(b["full_ids"]) for a, b in zip(loaded, result.records))
    with pytest.raises(BlocksftError, match="prepared with tokenizer"):
        load_records(tmp_path / "out.pt", tokenizer=build_tokenizer(vocab_size=300))


def test_settings_from_a_yaml_file(rows_file, tmp_path, model_dir):
    (tmp_path / "prepare.yaml").write_text("max_len: 120\nmax-samples: 1\n")
    args = [*flags(rows_file, tmp_path, model_dir), "--config", str(tmp_path / "prepare.yaml")]
    assert cli_main(["prepare", *args]) == 0
    assert len(torch.load(tmp_path / "out.pt", weights_only=True)) == 1


def test_benchmark_paths_agree_on_real_gsm8k_rows(capsys):
    data = default_data()
    if not data.is_file():
        pytest.skip("shared/data/gsm8k is not available here")
    args = ["--data", str(data), "--rows", "60", "--vocab-size", "600", "--tokenizer-rows", "60"]
    assert bench_main(args) == 0
    out = capsys.readouterr().out
    assert "records identical on every path" in out and "no real LLaDA tokenizer" in out
