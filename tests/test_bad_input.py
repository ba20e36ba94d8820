"""Every command x every bad input a user could hit: exit 2, one line, no traceback, nothing left behind.

Each case builds its input in a fresh folder, runs ``blocksft.cli.main([...])`` in this process
from that folder, and checks that the command exits with 2, that stderr holds exactly one
``blocksft <cmd>: error:`` line which names the flag or file (``match``) and no traceback, and
that no file appeared, vanished or changed in that folder or in the shared inputs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from train_utils import TINY_TRAIN_FLAGS, write_tiny_inputs

from blocksft.cli import COMMANDS, main
from blocksft.config.flags import config_to_dict
from blocksft.config.train import TrainConfig
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.testing import tiny_llada_model, tiny_tokenizer
from blocksft.testing_dream import tiny_dream_model, tiny_dream_tokenizer
from blocksft.train.logs import CSV_COLUMNS

NOT_UTF8 = b"caf\xe9 \xff\xfe"  # Latin-1 text: invalid as UTF-8
ARG_NOT_UTF8 = NOT_UTF8.decode("utf-8", "surrogateescape")  # what Python puts in sys.argv for it

GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "3 + 2 = 5\n#### 5"},
    {"question": "Ann has 10 pens and loses 4. How many pens?", "answer": "10 - 4 = 6\n#### 6"},
]
PREPARE_ROWS = [
    {"type": "MATH_AnsAug", "query": "What is 2+3?", "response": "2+3 = 5.\nThe answer is: 5"},
    {"type": "MATH_FOBAR", "query": "Compute 7-4.", "response": "7-4 = 3.\nThe answer is: 3"},
]


@dataclass(frozen=True)
class World:
    """Inputs shared by every case (never modified by a case: the test checks that too)."""

    root: Path
    model: Path  # tiny LLaDA + tokenizer
    nomask: Path  # the same model, its tokenizer without <|mdm_mask|>
    dream: Path  # tiny Dream + its tokenizer
    dream_nomask: Path  # the same Dream model, its tokenizer without <|mask|>
    data: Path  # a record file with its sidecar
    gsm: Path  # GSM8K rows
    rows: Path  # MetaMathQA-style rows for prepare
    adapter: Path  # a LoRA adapter of the tiny model
    logs: Path  # a run's logs folder with train_loss.csv


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tokenizer_without_mask(src: Path, dst: Path, mask: str = "<|mdm_mask|>") -> Path:
    """A copy of checkpoint ``src`` whose tokenizer calls its mask token ``mask`` something else."""
    shutil.copytree(src, dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = dst / name
        if path.is_file():
            path.write_text(path.read_text().replace(mask, "<|unused_0|>"))
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.pop("mask_token", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def _adapter(model_dir: Path, dst: Path, **config_overrides) -> Path:
    tokenizer = tiny_tokenizer()
    peft_model = get_peft_model(
        tiny_llada_model(tokenizer, seed=0, **config_overrides),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    peft_model.save_pretrained(dst)
    return dst


def _dream_checkpoint(dst: Path) -> Path:
    tokenizer = tiny_dream_tokenizer()
    tiny_dream_model(tokenizer, seed=0).save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def build_world(root: Path) -> World:
    """The shared inputs, written under ``root``."""
    model, data = write_tiny_inputs(root, n_samples=16)
    logs = root / "run_logs"
    logs.mkdir()
    rows = [",".join(CSV_COLUMNS)] + [f"{s},{3.0 - s / 10},1e-5,0.5,10,100,128,8,1e9,1000.0" for s in (1, 2)]
    (logs / "train_loss.csv").write_text("\n".join(rows) + "\n")
    dream = _dream_checkpoint(root / "dream")
    return World(
        root=root,
        model=model,
        nomask=_tokenizer_without_mask(model, root / "nomask"),
        dream=dream,
        dream_nomask=_tokenizer_without_mask(dream, root / "dream-nomask", mask="<|mask|>"),
        data=data,
        gsm=_jsonl(root / "gsm.jsonl", GSM_ROWS),
        rows=_jsonl(root / "rows.jsonl", PREPARE_ROWS),
        adapter=_adapter(model, root / "adapter"),
        logs=logs,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("bad-input-world"))


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))


# ----- building blocks of the cases ---------------------------------------------------------------


def prepare(w: World, t: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "--dataset",
        str(w.rows),
        "--model",
        str(w.model),
        "--output",
        str(t / "out.pt"),
        "--filter_type",
        "",
        *extra,
    ]


def train(w: World, t: Path, *extra: str, data: Path | None = None, model: Path | None = None) -> list[str]:
    paths = ["--model", str(model or w.model), "--data", str(data or w.data), "--ckpt-dir", str(t / "run")]
    return ["train", *paths, *TINY_TRAIN_FLAGS, "--total-steps", "2", *extra]


def generate(w: World, t: Path, *extra: str, model: Path | None = None) -> list[str]:
    args = [
        "generate",
        "--model",
        str(model or w.model),
        "--gen-length",
        "8",
        "--block-length",
        "8",
        "--steps",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
    return args if "--prompt" in extra else [*args, "--prompt", "What is 2+3?"]


def evaluate(
    w: World, t: Path, *extra: str, data: Path | None = None, model: Path | None = None
) -> list[str]:
    return [
        "eval",
        "--model",
        str(model or w.model),
        "--data",
        str(data or w.gsm),
        "--output",
        str(t / "res.jsonl"),
        "--gen-length",
        "8",
        "--block-length",
        "8",
        "--steps",
        "8",
        "--device",
        "cpu",
        "--limit",
        "2",
        *extra,
    ]


def merge(w: World, t: Path, *extra: str, adapter: Path | None = None) -> list[str]:
    return [
        "merge",
        "--base",
        str(w.model),
        "--adapter",
        str(adapter or w.adapter),
        "--output",
        str(t / "merged"),
        *extra,
    ]


def plot(w: World, t: Path, *extra: str, run: Path | None = None) -> list[str]:
    return ["plot", str(run or w.logs), "--output", str(t / "loss.png"), *extra]


def demo(w: World, t: Path, *extra: str) -> list[str]:
    return ["demo", "--out", str(t / "demo"), *extra]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def records_file(w: World, path: Path, edit: Callable[[list[dict]], object], sidecar: bool = True) -> Path:
    """A copy of the shared records with ``edit`` applied (with a sidecar for the tiny tokenizer)."""
    records = torch.load(w.data, weights_only=True)
    edit(records)
    if sidecar:
        save_records(records, path, {"tokenizer": tokenizer_fingerprint(tiny_tokenizer())})
    else:
        torch.save(records, path)
    return path


def put_mask_in_answer(records: list[dict]) -> None:
    records[3]["full_ids"][records[3]["prompt_len"] + 2] = 2  # the tiny tokenizer's <|mdm_mask|>


def put_mask_in_prompt(records: list[dict]) -> None:
    records[5]["full_ids"][1] = 2


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World, Path], list[str]]
    match: str  # the error line must name the flag or file and the fix


CASES = [
    # ----- every command: configuration files and flag values -----
    Case(
        "prepare-yaml-broken",
        lambda w, t: prepare(w, t, "--config", str(write(t / "c.yaml", "max_len: [1,\n"))),
        r"c\.yaml.*not valid YAML",
    ),
    Case(
        "prepare-yaml-not-utf8",
        lambda w, t: prepare(w, t, "--config", str(write(t / "c.yaml", NOT_UTF8))),
        r"c\.yaml.*UTF-8",
    ),
    Case(
        "prepare-yaml-list",
        lambda w, t: prepare(w, t, "--config", str(write(t / "c.yaml", "- 1\n"))),
        r"c\.yaml.*mapping",
    ),
    Case(
        "prepare-yaml-unknown-key",
        lambda w, t: prepare(w, t, "--config", str(write(t / "c.yaml", "max_lne: 3\n"))),
        r"c\.yaml.*unknown keys \['max_lne'\]",
    ),
    Case(
        "prepare-yaml-missing",
        lambda w, t: prepare(w, t, "--config", str(t / "none.yaml")),
        r"none\.yaml does not exist",
    ),
    Case(
        "train-yaml-broken",
        lambda w, t: train(w, t, "--config", str(write(t / "c.yaml", "lr: : 3\n"))),
        r"c\.yaml.*not valid YAML",
    ),
    Case(
        "train-yaml-lr-nan",
        lambda w, t: train(w, t, "--config", str(write(t / "c.yaml", "lr: .nan\n"))),
        r"lr.*nan.*finite",
    ),
    Case(
        "train-yaml-lr-text",
        lambda w, t: train(w, t, "--config", str(write(t / "c.yaml", "lr: fast\n"))),
        r"lr.*'fast'.*number",
    ),
    Case(
        "generate-yaml-broken",
        lambda w, t: generate(w, t, "--config", str(write(t / "c.yaml", "{\n"))),
        r"c\.yaml.*not valid YAML",
    ),
    Case(
        "demo-yaml-broken",
        lambda w, t: demo(w, t, "--config", str(write(t / "c.yaml", "seed: [\n"))),
        r"c\.yaml.*not valid YAML",
    ),
    Case(
        "train-flag-not-a-number",
        lambda w, t: train(w, t, "--micro-batch", "eight"),
        r"argument --micro-batch.*invalid int value: 'eight'",
    ),
    Case(
        "train-unknown-flag",
        lambda w, t: train(w, t, "--learning-rate", "1e-4"),
        r"unrecognized arguments: --learning-rate",
    ),
    Case(
        "eval-bad-choice",
        lambda w, t: evaluate(w, t, "--task", "mmlu"),
        r"argument --task: invalid choice: 'mmlu'",
    ),
    Case("train-lr-nan", lambda w, t: train(w, t, "--lr", "nan"), r"--lr nan.*finite"),
    Case("train-lr-inf", lambda w, t: train(w, t, "--lr", "inf"), r"--lr inf.*finite"),
    Case("train-lr-negative", lambda w, t: train(w, t, "--lr", "-1"), r"lr must be positive"),
    Case(
        "train-max-grad-norm-nan", lambda w, t: train(w, t, "--max-grad-norm", "nan"), r"--max-grad-norm nan"
    ),
    Case(
        "generate-temperature-nan", lambda w, t: generate(w, t, "--temperature", "nan"), r"--temperature nan"
    ),
    Case("eval-threshold-nan", lambda w, t: evaluate(w, t, "--threshold", "nan"), r"--threshold nan"),
    Case("demo-sft-lr-nan", lambda w, t: demo(w, t, "--sft-lr", "nan"), r"--sft-lr nan"),
    Case("plot-smooth-nan", lambda w, t: plot(w, t, "--smooth", "nan"), r"--smooth nan"),
    # ----- prepare -----
    Case(
        "prepare-dataset-missing",
        lambda w, t: prepare(w, t, "--dataset", str(t / "none.jsonl")),
        r"--dataset .*none\.jsonl: no such file",
    ),
    Case(
        "prepare-dataset-not-utf8",
        lambda w, t: prepare(
            w, t, "--dataset", str(write(t / "d.jsonl", b'{"query": "' + NOT_UTF8 + b'", "response": "r"}\n'))
        ),
        r"d\.jsonl.*UTF-8",
    ),
    Case(
        "prepare-dataset-not-json",
        lambda w, t: prepare(w, t, "--dataset", str(write(t / "d.jsonl", "{oops\n"))),
        r"cannot read --dataset .*d\.jsonl",
    ),
    Case(
        "prepare-dataset-empty",
        lambda w, t: prepare(w, t, "--dataset", str(write(t / "d.jsonl", ""))),
        r"d\.jsonl is an empty file",
    ),
    Case(
        "prepare-dataset-unknown-type",
        lambda w, t: prepare(w, t, "--dataset", str(write(t / "d.csv", "a,b\n"))),
        r"d\.csv: unknown file type",
    ),
    Case(
        "prepare-dataset-no-fields",
        lambda w, t: prepare(w, t, "--dataset", str(_jsonl(t / "d.jsonl", [{"q": "x"}]))),
        r"d\.jsonl has no field 'query', 'response'.*--query-field",
    ),
    Case(
        "prepare-row-empty-answer",
        lambda w, t: prepare(
            w, t, "--dataset", str(_jsonl(t / "d.jsonl", [PREPARE_ROWS[0], {"query": "q", "response": " "}]))
        ),
        r"row 1 of .*d\.jsonl.*'response' is empty",
    ),
    Case(
        "prepare-row-number-query",
        lambda w, t: prepare(w, t, "--dataset", str(_jsonl(t / "d.jsonl", [{"query": 7, "response": "r"}]))),
        r"row 0 of .*'query' is a int",
    ),
    Case(
        "prepare-row-eot-in-answer",
        lambda w, t: prepare(
            w,
            t,
            "--dataset",
            str(_jsonl(t / "d.jsonl", [PREPARE_ROWS[0], {"query": "q", "response": "a <|eot_id|> b"}])),
        ),
        r"row 1 of .*d\.jsonl: field 'response' holds '<\|eot_id\|>'.*--on-special-text skip",
    ),
    Case(
        "prepare-row-mask-in-query",
        lambda w, t: prepare(
            w,
            t,
            "--dataset",
            str(_jsonl(t / "d.jsonl", [{"query": "fill <|mdm_mask|> in", "response": "r"}])),
        ),
        r"row 0 of .*field 'query' holds '<\|mdm_mask\|>'",
    ),
    Case(
        "prepare-output-parent-is-file",
        lambda w, t: prepare(w, t, "--output", str(write(t / "f", "x") / "o.pt")),
        r"--output .*f/o\.pt: .*f is a file, not a folder",
    ),
    Case(
        "prepare-output-is-folder", lambda w, t: prepare(w, t, "--output", str(t)), r"--output .* is a folder"
    ),
    Case(
        "prepare-output-exists",
        lambda w, t: prepare(w, t, "--output", str(write(t / "o.pt", "precious"))),
        r"--output .*o\.pt already exists; pass --overwrite",
    ),
    Case(
        "prepare-model-missing",
        lambda w, t: prepare(w, t, "--model", str(t / "nomodel")),
        r"--model .*nomodel: no such checkpoint folder",
    ),
    Case(
        "prepare-tokenizer-without-mask",
        lambda w, t: prepare(w, t, "--model", str(w.nomask)),
        r"--model .*nomask.*has no mask token <\|mdm_mask\|>",
    ),
    Case(
        "prepare-dream-tokenizer-without-mask",
        lambda w, t: prepare(w, t, "--model", str(w.dream_nomask)),
        r"--model .*dream-nomask: its tokenizer has no mask token <\|mask\|>",
    ),
    Case(
        "prepare-template-no-slot",
        lambda w, t: prepare(w, t, "--prompt-template", "no slot"),
        r"--prompt-template 'no slot' has no \{query\} slot",
    ),
    Case(
        "prepare-template-not-utf8",
        lambda w, t: prepare(w, t, "--prompt-template", str(write(t / "p.txt", NOT_UTF8))),
        r"--prompt-template file .*p\.txt .*UTF-8",
    ),
    Case("prepare-max-len-zero", lambda w, t: prepare(w, t, "--max-len", "0"), r"max_len must be >= 1"),
    Case(
        "prepare-max-len-below-prompts",
        lambda w, t: prepare(w, t, "--max-len", "10"),
        r"--max_len 10 is smaller than every prompt",
    ),
    Case(
        "prepare-filter-skips-all",
        lambda w, t: prepare(w, t, "--filter_type", "MATH"),
        r"every row .* was skipped by --filter_type 'MATH'",
    ),
    Case(
        "prepare-filter-without-type",
        lambda w, t: prepare(
            w,
            t,
            "--filter_type",
            "GSM",
            "--dataset",
            str(w.gsm),
            "--query-field",
            "question",
            "--response-field",
            "answer",
        ),
        r"--filter_type 'GSM' .* has none",
    ),
    Case("prepare-num-proc-zero", lambda w, t: prepare(w, t, "--num-proc", "0"), r"num_proc must be >= 1"),
    # ----- train -----
    Case(
        "train-data-missing",
        lambda w, t: train(w, t, data=t / "none.pt"),
        r"none\.pt does not exist.*prepare",
    ),
    Case(
        "train-data-text",
        lambda w, t: train(w, t, data=write(t / "d.pt", "not a record file")),
        r"d\.pt is not a record file",
    ),
    Case(
        "train-data-not-list",
        lambda w, t: train(w, t, data=_save(t / "d.pt", {"a": 1})),
        r"d\.pt holds a dict",
    ),
    Case(
        "train-data-empty-list",
        lambda w, t: train(w, t, data=_save(t / "d.pt", [])),
        r"d\.pt holds no records",
    ),
    Case(
        "train-data-prompt-len",
        lambda w, t: train(
            w, t, data=_save(t / "d.pt", [{"prompt_len": 50, "full_ids": torch.arange(6, 20)}])
        ),
        r"prompt_len outside",
    ),
    Case("train-data-too-long", lambda w, t: train(w, t, "--max-len", "20"), r"longer than max_len 20"),
    Case(
        "train-data-other-tokenizer",
        lambda w, t: train(w, t, data=_other_tokenizer_records(w, t / "d.pt")),
        r"d\.pt was prepared with tokenizer .*--overwrite",
    ),
    Case(
        "train-dream-model-llada-records",
        lambda w, t: train(w, t, model=w.dream),
        r"data\.pt was prepared with tokenizer .*mask id 2 vs 3.*--overwrite",
    ),
    Case(
        "train-data-mask-in-answer",
        lambda w, t: train(w, t, data=records_file(w, t / "d.pt", put_mask_in_answer)),
        r"record 3 of .*d\.pt holds the mask id 2 .*position",
    ),
    Case(
        "train-data-mask-in-prompt",
        lambda w, t: train(w, t, data=records_file(w, t / "d.pt", put_mask_in_prompt)),
        r"record 5 of .*d\.pt holds the mask id 2",
    ),
    Case(
        "train-data-mask-no-sidecar",
        lambda w, t: train(w, t, data=records_file(w, t / "d.pt", put_mask_in_answer, sidecar=False)),
        r"record 3 .*mask id 2",
    ),
    Case(
        "train-ckpt-dir-parent-is-file",
        lambda w, t: train(w, t, "--ckpt-dir", str(write(t / "f", "x") / "run")),
        r"--ckpt-dir .*f/run.*f is a file, not a folder",
    ),
    Case(
        "train-logs-is-file",
        lambda w, t: train(w, t, "--ckpt-dir", str(t / "run"), *_touch(t / "run_logs")),
        r"run_logs is a file",
    ),
    Case(
        "train-logs-exist",
        lambda w, t: train(w, t, *_touch(t / "run_logs" / "train_loss.csv")),
        r"run_logs exists already .*--resume",
    ),
    Case(
        "train-resume-other-lr",
        lambda w, t: train(w, t, "--resume", "--lr", "0.5", *_saved_run(w, t)),
        r"--resume: settings differ .*lr: .*0\.5.*--allow-changes",
    ),
    Case(
        "train-resume-change-not-allowed",
        lambda w, t: train(w, t, "--resume", "--allow-changes", "seed", "--seed", "3", *_saved_run(w, t)),
        r"--allow-changes seed: only .*lr",
    ),
    Case(
        "train-allow-changes-without-resume",
        lambda w, t: train(w, t, "--allow-changes", "lr"),
        r"--allow-changes .*--resume",
    ),
    Case(
        "train-mask-id-pad", lambda w, t: train(w, t, "--mask-id", "1"), r"--mask-id 1 equals the padding id"
    ),
    Case(
        "train-mask-id-outside",
        lambda w, t: train(w, t, "--mask-id", "100000"),
        r"--mask-id 100000 is outside",
    ),
    Case(
        "train-mask-id-not-mask",
        lambda w, t: train(w, t, "--mask-id", "7"),
        r"--mask-id 7 differs from the tokenizer's <\|mdm_mask\|> id 2",
    ),
    Case(
        "train-tokenizer-without-mask",
        lambda w, t: train(
            w, t, model=w.nomask, data=records_file(w, t / "d.pt", lambda r: None, sidecar=False)
        ),
        r"tokenizer .*nomask.* has no mask token <\|mdm_mask\|>.*--mask-id",
    ),
    Case(
        "train-lora-targets-nomatch", lambda w, t: train(w, t, "--lora-targets", "o_proj"), r"o_proj match no"
    ),
    Case(
        "train-model-missing",
        lambda w, t: train(w, t, model=t / "nomodel"),
        r"nomodel: no such checkpoint folder",
    ),
    Case(
        "train-deepspeed-missing",
        lambda w, t: train(w, t, "--deepspeed", str(t / "ds.json")),
        r"--deepspeed .*ds\.json: no such file",
    ),
    Case(
        "train-warmup-out-of-range",
        lambda w, t: train(w, t, "--warmup-ratio", "1.5"),
        r"warmup_ratio must be in",
    ),
    Case(
        "train-micro-batch-zero",
        lambda w, t: train(w, t, "--micro-batch", "0"),
        r"micro_batch must be positive",
    ),
    Case(
        "train-batch-too-big",
        lambda w, t: train(w, t, "--micro-batch", "64", "--epochs", "1"),
        r"cannot fill one optimizer step",
    ),
    Case(
        "train-objective-option",
        lambda w, t: train(w, t, "--objective", "fullseq", "--prefix-mask-rate", "0.5"),
        r"--prefix-mask-rate",
    ),
    # ----- generate -----
    Case(
        "generate-model-missing",
        lambda w, t: generate(w, t, model=t / "nomodel"),
        r"nomodel: no such checkpoint",
    ),
    Case(
        "generate-model-not-a-checkpoint",
        lambda w, t: generate(w, t, model=_folder_with(t / "m", "x.txt")),
        r"cannot load the tokenizer of --model .*m",
    ),
    Case("generate-no-prompt", lambda w, t: generate(w, t)[:-2], r"--prompt is required"),
    Case(
        "generate-prompt-not-utf8",
        lambda w, t: generate(w, t, "--prompt", ARG_NOT_UTF8),
        r"--prompt is not valid UTF-8",
    ),
    Case(
        "generate-prompt-mask",
        lambda w, t: generate(w, t, "--prompt", "fill <|mdm_mask|> in"),
        r"--prompt holds '<\|mdm_mask\|>'",
    ),
    Case(
        "generate-dream-prompt-empty",
        lambda w, t: generate(w, t, "--prompt", "", model=w.dream),
        r"--prompt '' encodes to no tokens: this model predicts token i from the output at i - 1",
    ),
    Case(
        "generate-chat-prompt-eot",
        lambda w, t: generate(w, t, "--chat", "--prompt", "hi<|eot_id|>"),
        r"--prompt holds '<\|eot_id\|>'.*drop --chat",
    ),
    Case(
        "generate-gen-length-too-long",
        lambda w, t: generate(w, t, "--gen-length", "2048", "--block-length", "2048", "--steps", "1"),
        r"gen_length 2048 .*longer than the model's max_sequence_length 1024.*--gen-length",
    ),
    Case(
        "generate-mask-id-not-mask",
        lambda w, t: generate(w, t, "--mask-id", "7"),
        r"--mask-id 7 differs from the tokenizer's <\|mdm_mask\|> id 2",
    ),
    Case(
        "generate-mask-id-outside",
        lambda w, t: generate(w, t, "--mask-id", "100000"),
        r"--mask-id 100000 is outside",
    ),
    Case(
        "generate-mask-id-pad",
        lambda w, t: generate(w, t, "--mask-id", "1"),
        r"--mask-id 1 equals the padding id",
    ),
    Case(
        "generate-tokenizer-without-mask",
        lambda w, t: generate(w, t, model=w.nomask),
        r"tokenizer .*nomask.* has no mask token <\|mdm_mask\|>.*--mask-id",
    ),
    Case("generate-device-cuda7", lambda w, t: generate(w, t, "--device", "cuda:7"), r"--device cuda:7.*cpu"),
    Case("generate-device-nonsense", lambda w, t: generate(w, t, "--device", "gpu"), r"--device gpu"),
    Case(
        "generate-steps-uneven",
        lambda w, t: generate(w, t, "--block-length", "4", "--steps", "3"),
        r"steps 3 cannot be split evenly",
    ),
    Case(
        "generate-block-not-dividing",
        lambda w, t: generate(w, t, "--block-length", "3"),
        r"gen_length 8 is not a multiple of block_length 3",
    ),
    # ----- eval -----
    Case(
        "eval-data-missing", lambda w, t: evaluate(w, t, data=t / "none.jsonl"), r"none\.jsonl: no such file"
    ),
    Case(
        "eval-data-not-utf8",
        lambda w, t: evaluate(
            w, t, data=write(t / "d.jsonl", b'{"question": "' + NOT_UTF8 + b'", "answer": "#### 3"}\n')
        ),
        r"d\.jsonl.*UTF-8",
    ),
    Case(
        "eval-data-empty",
        lambda w, t: evaluate(w, t, data=write(t / "d.jsonl", "")),
        r"d\.jsonl is an empty file",
    ),
    Case(
        "eval-data-no-answer-field",
        lambda w, t: evaluate(w, t, data=_jsonl(t / "d.jsonl", [{"question": "q"}])),
        r"d\.jsonl has no field 'answer'",
    ),
    Case(
        "eval-data-answer-without-hashes",
        lambda w, t: evaluate(
            w,
            t,
            data=_jsonl(t / "d.jsonl", [GSM_ROWS[0], {"question": "q", "answer": "The answer is eighteen"}]),
        ),
        r"row 1 of .*d\.jsonl: field 'answer' has no '#### <number>'",
    ),
    Case(
        "eval-data-gold-not-number",
        lambda w, t: evaluate(
            w, t, data=_jsonl(t / "d.jsonl", [{"question": "q", "answer": "so\n#### eighteen"}])
        ),
        r"row 0 .*'#### <number>'.*eighteen",
    ),
    Case(
        "eval-data-special-text",
        lambda w, t: evaluate(
            w, t, data=_jsonl(t / "d.jsonl", [GSM_ROWS[0], {"question": "a<|eot_id|>b", "answer": "#### 3"}])
        ),
        r"row 1 of .*d\.jsonl: field 'question' holds '<\|eot_id\|>'",
    ),
    Case(
        "eval-math-no-box",
        lambda w, t: evaluate(
            w, t, "--task", "math", data=_jsonl(t / "d.jsonl", [{"problem": "p", "solution": "no box"}])
        ),
        r"row 0 of .*'solution' has no \\boxed",
    ),
    Case(
        "eval-output-parent-is-file",
        lambda w, t: evaluate(w, t, "--output", str(write(t / "f", "x") / "r.jsonl")),
        r"--output .*f/r\.jsonl: .*f is a file, not a folder",
    ),
    Case(
        "eval-output-is-folder", lambda w, t: evaluate(w, t, "--output", str(t)), r"--output .* is a folder"
    ),
    Case(
        "eval-output-not-results",
        lambda w, t: evaluate(w, t, "--output", str(write(t / "r.jsonl", "{bad\n"))),
        r"r\.jsonl line 1 is not valid JSON",
    ),
    Case(
        "eval-output-other-rows",
        lambda w, t: evaluate(w, t, "--output", str(_jsonl(t / "r.jsonl", [{"a": 1}]))),
        r"r\.jsonl line 1 is not a blocksft eval row",
    ),
    Case("eval-device-cuda7", lambda w, t: evaluate(w, t, "--device", "cuda:7"), r"--device cuda:7.*cpu"),
    Case("eval-device-nonsense", lambda w, t: evaluate(w, t, "--device", "tpu:x"), r"--device tpu:x"),
    Case(
        "eval-tokenizer-without-mask",
        lambda w, t: evaluate(w, t, model=w.nomask),
        r"tokenizer .*nomask.* has no mask token <\|mdm_mask\|>",
    ),
    Case(
        "eval-gen-length-too-long",
        lambda w, t: evaluate(w, t, "--gen-length", "2048", "--block-length", "2048", "--steps", "1"),
        r"gen_length 2048 .*longer than the model's max_sequence_length 1024.*--gen-length",
    ),
    Case(
        "eval-model-missing", lambda w, t: evaluate(w, t, model=t / "nomodel"), r"nomodel: no such checkpoint"
    ),
    Case("eval-limit-zero", lambda w, t: evaluate(w, t, "--limit", "0"), r"--limit must be >= 1"),
    Case(
        "eval-block-length-list-bad", lambda w, t: evaluate(w, t, "--block-length", "8,x"), r"--block-length"
    ),
    Case(
        "eval-prompt-style-not-utf8",
        lambda w, t: evaluate(w, t, "--prompt-style", str(write(t / "p.txt", NOT_UTF8 + b"{query}"))),
        r"p\.txt .*UTF-8",
    ),
    Case(
        "eval-compare-missing",
        lambda w, t: ["eval", "--compare", str(t / "a.jsonl"), str(t / "b.jsonl")],
        r"a\.jsonl does not exist",
    ),
    Case(
        "eval-compare-not-results",
        lambda w, t: [
            "eval",
            "--compare",
            str(write(t / "a.jsonl", "x\n")),
            str(write(t / "b.jsonl", "x\n")),
        ],
        r"a\.jsonl line 1 is not valid JSON",
    ),
    Case(
        "eval-compare-not-utf8",
        lambda w, t: [
            "eval",
            "--compare",
            str(write(t / "a.jsonl", NOT_UTF8)),
            str(write(t / "b.jsonl", "x\n")),
        ],
        r"a\.jsonl .*UTF-8",
    ),
    # ----- merge -----
    Case(
        "merge-adapter-missing",
        lambda w, t: merge(w, t, adapter=t / "none"),
        r"--adapter .*none: no adapter_config",
    ),
    Case(
        "merge-adapter-without-weights",
        lambda w, t: merge(w, t, adapter=_adapter_copy(w, t / "a", drop="adapter_model.safetensors")),
        r"--adapter .*a: no adapter weights",
    ),
    Case(
        "merge-adapter-truncated",
        lambda w, t: merge(w, t, adapter=_adapter_copy(w, t / "a", truncate=True)),
        r"--adapter .*a: cannot load",
    ),
    Case(
        "merge-adapter-config-broken",
        lambda w, t: merge(w, t, adapter=_adapter_copy(w, t / "a", config="{oops")),
        r"--adapter .*adapter_config\.json is not valid JSON",
    ),
    Case(
        "merge-adapter-other-width",
        lambda w, t: merge(w, t, adapter=_other_width_adapter(w, t / "a")),
        r"--adapter .*a does not fit --base .*size mismatch",
    ),
    Case(
        "merge-output-exists",
        lambda w, t: merge(w, t, "--output", str(_folder_with(t / "o", "x"))),
        r"--output .*o exists already",
    ),
    Case(
        "merge-output-parent-is-file",
        lambda w, t: merge(w, t, "--output", str(write(t / "f", "x") / "o")),
        r"--output .*f/o: .*f is a file, not a folder",
    ),
    Case(
        "merge-base-missing",
        lambda w, t: [
            "merge",
            "--base",
            str(t / "nobase"),
            "--adapter",
            str(w.adapter),
            "--output",
            str(t / "o"),
        ],
        r"nobase: no such checkpoint folder",
    ),
    Case(
        "merge-no-output",
        lambda w, t: ["merge", "--adapter", str(w.adapter)],
        r"--adapter and --output are required",
    ),
    # ----- plot -----
    Case("plot-run-missing", lambda w, t: plot(w, t, run=t / "none"), r"none: no train_loss\.csv"),
    Case(
        "plot-csv-not-utf8",
        lambda w, t: plot(w, t, run=write(t / "l.csv", b"step,loss\n1," + NOT_UTF8 + b"\n")),
        r"l\.csv .*UTF-8",
    ),
    Case("plot-csv-empty", lambda w, t: plot(w, t, run=write(t / "l.csv", "")), r"l\.csv has no rows"),
    Case(
        "plot-csv-header-only",
        lambda w, t: plot(w, t, run=write(t / "l.csv", "step,loss\n")),
        r"l\.csv has no rows",
    ),
    Case(
        "plot-csv-not-numbers",
        lambda w, t: plot(w, t, run=write(t / "l.csv", "step,loss\n1,abc\n")),
        r"l\.csv line 2: 'abc' .*not a number",
    ),
    Case(
        "plot-output-parent-is-file",
        lambda w, t: plot(w, t, "--output", str(write(t / "f", "x") / "p.png")),
        r"--output .*f/p\.png: .*f is a file, not a folder",
    ),
    Case("plot-output-is-folder", lambda w, t: plot(w, t, "--output", str(t)), r"--output .* is a folder"),
    Case("plot-metric-missing", lambda w, t: plot(w, t, "--metric", "accuracy"), r"no column 'accuracy'"),
    Case(
        "plot-labels-count", lambda w, t: plot(w, t, "--labels", "a", "b"), r"--labels: 2 labels for 1 runs"
    ),
    Case("plot-smooth-out-of-range", lambda w, t: plot(w, t, "--smooth", "1.5"), r"smooth must be in"),
    # ----- demo -----
    Case(
        "demo-heads-not-dividing",
        lambda w, t: demo(w, t, "--d-model", "30", "--n-heads", "4"),
        r"--d-model 30 must be a multiple of --n-heads 4",
    ),
    Case(
        "demo-head-dim-odd",
        lambda w, t: demo(w, t, "--d-model", "36", "--n-heads", "4"),
        r"heads of 9 dimensions.*even head size",
    ),
    Case(
        "demo-out-parent-is-file",
        lambda w, t: demo(w, t, "--out", str(write(t / "f", "x") / "d")),
        r"--out .*f/d: .*f is a file, not a folder",
    ),
    Case(
        "demo-out-is-file", lambda w, t: demo(w, t, "--out", str(write(t / "d", "x"))), r"--out .*d is a file"
    ),
    Case(
        "demo-out-not-empty",
        lambda w, t: demo(w, t, "--out", str(_folder_with(t / "d", "x"))),
        r"--out .*d exists and is not empty; pass --overwrite",
    ),
    Case(
        "demo-block-lengths-not-dividing",
        lambda w, t: demo(w, t, "--eval-block-lengths", "3"),
        r"divide gen_length",
    ),
    # ----- bench -----
    Case("bench-unknown", lambda w, t: ["bench", "nothing"], r"unknown benchmark 'nothing'"),
    Case(
        "bench-train-unknown-flag",
        lambda w, t: ["bench", "train", "--nope"],
        r"^blocksft bench train: error: unrecognized arguments: --nope",
    ),
    Case(
        "bench-generate-not-a-number",
        lambda w, t: ["bench", "generate", "--repeats", "x"],
        r"^blocksft bench generate: error: argument --repeats: invalid int value: 'x'",
    ),
]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _touch(path: Path) -> list[str]:
    write(path, "")
    return []


def _folder_with(folder: Path, name: str) -> Path:
    write(folder / name, "x")
    return folder


def _saved_run(w: World, t: Path) -> list[str]:
    """A run folder as an interrupted run leaves it: its settings saved (lr 0.02)."""

    config = TrainConfig(
        model=str(w.model),
        data=str(w.data),
        ckpt_dir=str(t / "run"),
        micro_batch=8,
        max_samples=0,
        block_size=8,
        lora_r=8,
        lora_alpha=16,
        max_len=64,
        use_cpu=True,
        total_steps=2,
    )
    write(t / "run_logs" / "config.json", json.dumps({"config": config_to_dict(config), "derived": {}}))
    return []


def _other_tokenizer_records(w: World, path: Path) -> Path:
    save_records(
        torch.load(w.data), path, {"tokenizer": tokenizer_fingerprint(tiny_tokenizer(vocab_size=300))}
    )
    return path


def _adapter_copy(w: World, dst: Path, *, drop: str = "", truncate: bool = False, config: str = "") -> Path:
    shutil.copytree(w.adapter, dst)
    if drop:
        (dst / drop).unlink()
    if truncate:
        weights = dst / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    if config:
        (dst / "adapter_config.json").write_text(config)
    return dst


def _other_width_adapter(w: World, dst: Path) -> Path:
    return _adapter(w.model, dst, d_model=32, mlp_hidden_size=64)


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (hidden ones too) with a digest of its content."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                found[str(path) + "/"] = ""
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(case, world, tmp_path, capsys, monkeypatch):
    command = case.id.split("-", 1)[0]
    folder = tmp_path / "work"
    folder.mkdir()
    before_world = _snapshot(world.root)
    # The case writes its own inputs first; only what the command does afterwards is checked.
    argv = case.argv(world, folder)
    before = _snapshot(folder)
    monkeypatch.chdir(folder)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if re.search(r"\berror\b", line, re.IGNORECASE)]
    assert "Traceback" not in err, err
    assert code == 2, err
    # (a benchmark names itself: blocksft bench train: error: ...)
    assert len(errors) == 1 and re.match(rf"blocksft {command}( \w+)?: error: ", errors[0]), err
    assert re.search(case.match, errors[0]), errors[0]
    assert _snapshot(folder) == before, "the command left, removed or changed files"
    assert _snapshot(world.root) == before_world


def test_the_table_covers_every_command():
    assert {c.id.split("-", 1)[0] for c in CASES} == set(COMMANDS)
    assert len({c.id for c in CASES}) == len(CASES)
