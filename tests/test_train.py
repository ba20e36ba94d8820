"""`blocksft train` end to end on CPU with the tiny model: logs, merged checkpoints, resume, bad input."""

import copy
import dataclasses
import json
import math

import pytest
import torch
from train_utils import read_rows, safetensors_dtypes, tiny_config, write_tiny_inputs
from transformers import AutoModelForCausalLM, TrainerCallback

from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.errors import BlocksftError
from blocksft.testing import tiny_tokenizer
from blocksft.train.logs import CSV_COLUMNS
from blocksft.train.run import run_train


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    model_dir, data = write_tiny_inputs(folder)
    return folder, model_dir, data


@pytest.fixture(scope="module")
def blockwise_run(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(
        folder, model_dir, data, "blockwise", total_steps=20, save_every=10, checkpoint_every=10
    )
    return config, run_train(config)


class Interrupted(Exception):
    pass


class InterruptAt(TrainerCallback):
    """Stops the run as a crash would, when step ``step + 1`` is about to start."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"interrupted after step {self.step}")


def test_blockwise_run_logs_every_step_and_the_loss_falls(blockwise_run):
    config, result = blockwise_run
    logs = config.logs_dir
    rows = read_rows(logs / "train_loss.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 21)) and result.steps == 20
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert all(int(r["samples"]) == 8 and int(r["supervised_tokens"]) > 0 for r in rows)
    assert all(int(r["padded_tokens"]) % (8 * 8) == 0 for r in rows)  # 8 rows, each a multiple of 8 long
    assert all(int(r["tokens"]) <= int(r["padded_tokens"]) for r in rows)

    saved = json.loads((logs / "config.json").read_text())
    assert saved["config"]["objective"] == "blockwise" and saved["config"]["lr"] == config.lr
    assert saved["derived"]["total_steps"] == 20 and saved["derived"]["samples_per_step"] == 8
    assert saved["derived"]["objective_options"]["suffix_mask_prob"] == 1.0
    assert len(saved["derived"]["lora_modules"]) == 2 * 4  # q, k, v, up in both blocks
    ablation = json.loads((logs / "ablation_config.json").read_text())
    assert ablation["BLOCK_SIZE"] == 8 and ablation["SUFFIX_MASK_PROB"] == 1.0
    assert ablation["TOTAL_TRAIN_STEPS"] == 20 and ablation["MASK_ID"] == 2
    budget = json.loads((logs / "budget.json").read_text())
    assert budget["supervised_tokens"] == sum(int(r["supervised_tokens"]) for r in rows)
    assert budget["samples"] == 160 and budget["estimated_flops"] > 0

    batches = [json.loads(line) for line in (logs / "batches.jsonl").read_text().splitlines()]
    assert [b["step"] for b in batches] == list(range(1, 21))
    pairs = [(s, k) for b in batches for s, k in zip(b["samples"], b["blocks"]) if k >= 0]
    assert len(pairs) == len(set(pairs)), "a (sample, block) pair was trained twice"
    assert all(abs(b["loss"] - float(r["loss"])) < 1e-6 for b, r in zip(batches, rows))


def test_merged_checkpoints_reload_with_the_in_memory_merged_logits(blockwise_run):
    config, result = blockwise_run
    assert [p.name for p in result.exports] == ["blockwise_step0010", "blockwise_step0020"]
    final = result.exports[-1]
    keys = safetensors_dtypes(final)
    assert keys and not any("lora_" in k for k in keys)
    assert set(keys.values()) == {"F32"}  # the training dtype on CPU
    saved = json.loads((final / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_llada.LLaDAModelLM"
    for name in (
        "modeling_llada.py",
        "configuration_llada.py",
        "tokenizer.json",
        "adapter/adapter_config.json",
    ):
        assert (final / name).is_file(), name
    assert not list(final.parent.glob(".*tmp*")), "a temporary folder was left behind"

    merged = copy.deepcopy(result.model).merge_and_unload().eval()
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = torch.randint(0, 455, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, merged(input_ids=ids).logits)
        unmerged = result.model.eval()(input_ids=ids).logits
    torch.testing.assert_close(unmerged, merged(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(inputs, blockwise_run):
    folder, model_dir, data = inputs
    reference_config, _ = blockwise_run
    config = dataclasses.replace(reference_config, ckpt_dir=str(folder / "resumed"))
    with pytest.raises(Interrupted):
        run_train(config, callbacks=[InterruptAt(10)])
    with pytest.raises(BlocksftError, match="--resume"):
        run_train(config)  # the logs folder exists: refuse to overwrite it
    with pytest.raises(BlocksftError, match="lr"):
        run_train(dataclasses.replace(config, resume=True, lr=1e-3))
    result = run_train(dataclasses.replace(config, resume=True))
    assert result.steps == 20

    expected = read_rows(reference_config.logs_dir / "train_loss.csv")
    resumed = read_rows(config.logs_dir / "train_loss.csv")
    assert [r["step"] for r in resumed] == [r["step"] for r in expected]
    for column in ("loss", "grad_norm", "lr", "supervised_tokens"):
        assert [float(r[column]) for r in resumed[10:]] == pytest.approx(
            [float(r[column]) for r in expected[10:]], rel=1e-5
        ), column
    assert [p.name for p in result.exports] == ["resumed_step0020"]
    assert (folder / "resumed_step0010").is_dir()  # written before the interruption


def test_fullseq_run_in_bf16_logging_every_second_step(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(
        folder,
        model_dir,
        data,
        "fullseq",
        objective="fullseq",
        total_steps=4,
        dtype="bf16",
        grad_accum=2,
        log_every=2,
    )
    result = run_train(config)
    rows = read_rows(config.logs_dir / "train_loss.csv")
    batches = [json.loads(line) for line in (config.logs_dir / "batches.jsonl").read_text().splitlines()]
    assert [int(r["step"]) for r in rows] == [2, 4] and all(int(r["samples"]) == 32 for r in rows)
    assert [(b["step"], b["micro"]) for b in batches] == [(s, m) for s in range(1, 5) for m in (0, 1)]
    for row, window in zip(rows, (batches[:4], batches[4:])):  # the mean over 2 steps x 2 micro-batches
        assert float(row["loss"]) == pytest.approx(sum(b["loss"] for b in window) / 4, rel=1e-5)
    final = result.exports[-1]
    assert final.name == "fullseq_step0004"
    assert set(safetensors_dtypes(final).values()) == {"BF16"}
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"


class PoisonAt(TrainerCallback):
    """Makes the model produce NaN from step ``step + 1`` on: poisoned at the end of step ``step``
    (before its state is saved), or with ``before_step`` at the start of step ``step + 1`` (after:
    the saved state is sound, as when a run diverges)."""

    def __init__(self, step, before_step=False):
        self.step, self.before_step = step, before_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.before_step:
            self._poison(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.before_step:
            self._poison(state, model)

    def _poison(self, state, model):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))


def test_nonfinite_loss_stops_naming_the_step_and_samples(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "nan", total_steps=8, checkpoint_every=2)
    with pytest.raises(BlocksftError, match=r"loss is nan at step 5 \(samples \[\d+, "):
        run_train(config, callbacks=[PoisonAt(4)])
    checkpoints = sorted(p.name for p in config.checkpoints_dir.iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]  # the last good states are kept
    assert len(read_rows(config.logs_dir / "train_loss.csv")) == 4
    assert not list(folder.glob("nan_step*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_len": 16}, "longer than|max_len|--max-len"),
        ({"mask_id": 1}, "equals the padding id"),
        ({"mask_id": 10**6}, "outside the model's vocabulary"),
        ({"mask_id": 3}, "differs from the tokenizer's"),
        ({"lora_targets": "q_proj,o_proj"}, "o_proj match no linear layer"),
        ({"objective": "fullseq", "prefix_mask_rate": 0.5}, "--prefix-mask-rate"),
        ({"micro_batch": 128, "epochs": 1}, "cannot fill one optimizer step"),
    ],
)
def test_bad_settings_are_clear_errors(inputs, overrides, message):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "bad", **overrides)
    with pytest.raises(BlocksftError, match=message):
        run_train(config)


def test_bad_record_files_are_clear_errors(inputs, tmp_path):
    folder, model_dir, data = inputs
    bad = tmp_path / "bad.pt"
    torch.save([{"prompt_len": 50, "full_ids": torch.arange(6, 20)}], bad)
    with pytest.raises(BlocksftError, match="prompt_len"):
        run_train(tiny_config(tmp_path, model_dir, bad))
    with pytest.raises(BlocksftError, match="does not exist"):
        run_train(tiny_config(tmp_path, model_dir, tmp_path / "missing.pt"))
    other = tmp_path / "other.pt"
    save_records(
        torch.load(data), other, {"tokenizer": tokenizer_fingerprint(tiny_tokenizer(vocab_size=300))}
    )
    with pytest.raises(BlocksftError, match="was prepared with tokenizer .* differ in vocabulary size"):
        run_train(tiny_config(tmp_path, model_dir, other))
    reference_format = tmp_path / "reference.pt"
    torch.save([{"prompt_len": 3, "full_ids": torch.arange(6, 30)}] * 8, reference_format)
    result = run_train(tiny_config(tmp_path, model_dir, reference_format, "plain", epochs=1, total_steps=1))
    assert result.steps == 1  # a file written by the reference's pt.py trains unchanged


def test_full_finetuning_saves_the_whole_model_without_an_adapter(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "full", full_finetune=True, total_steps=2, lr=1e-3)
    result = run_train(config)
    final = result.exports[-1]
    assert not (final / "adapter").exists()
    saved = json.loads((config.logs_dir / "config.json").read_text())
    assert saved["derived"]["lora_modules"] == []
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = torch.randint(0, 455, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits)


def test_resume_refuses_a_record_file_that_changed_since(inputs, tmp_path):
    folder, model_dir, data = inputs
    records = torch.load(data)
    copy_path = tmp_path / "data.pt"
    torch.save(records, copy_path)
    config = tiny_config(tmp_path, model_dir, copy_path, "changed", total_steps=4, checkpoint_every=2)
    with pytest.raises(Interrupted):
        run_train(config, callbacks=[InterruptAt(2)])
    records[0]["full_ids"] = records[0]["full_ids"][:-9]  # one answer loses a block
    torch.save(records, copy_path)
    with pytest.raises(BlocksftError, match="holds other records than the run was trained on"):
        run_train(dataclasses.replace(config, resume=True))


def test_resume_refuses_the_same_path_with_other_content_of_the_same_shape(inputs, tmp_path):
    folder, model_dir, data = inputs
    records = torch.load(data)
    copy_path = tmp_path / "data.pt"
    save_records(records, copy_path, {"tokenizer": tokenizer_fingerprint(tiny_tokenizer())})
    config = tiny_config(tmp_path, model_dir, copy_path, "rewritten", total_steps=4, checkpoint_every=2)
    with pytest.raises(Interrupted):
        run_train(config, callbacks=[InterruptAt(2)])
    saved = json.loads((config.logs_dir / "config.json").read_text())["derived"]["data"]
    assert saved["trained_records_sha256"] == saved["records_sha256"]  # --max-samples 0: all of them
    # Same path, same number of records, same lengths and blocks: only some answer tokens differ.
    answer = records[5]["full_ids"][records[5]["prompt_len"] :]
    answer[:] = answer.flip(0)
    save_records(records, copy_path, {"tokenizer": tokenizer_fingerprint(tiny_tokenizer())})
    with pytest.raises(BlocksftError, match=r"data\.pt holds other records than the run was trained on"):
        run_train(dataclasses.replace(config, resume=True))
    # The same records written by the reference's plain torch.save (no sidecar) are the same data.
    torch.save(torch.load(data), copy_path)
    copy_path.with_name("data.pt.meta.json").unlink()
    assert run_train(dataclasses.replace(config, resume=True)).steps == 4


def test_nan_stop_then_resume_with_a_lower_learning_rate(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "nan_then_lower", total_steps=8, checkpoint_every=2)
    with pytest.raises(BlocksftError, match="--resume --allow-changes lr --lr <lower>") as stop:
        run_train(config, callbacks=[PoisonAt(4, before_step=True)])
    assert "step 5" in str(stop.value)
    with pytest.raises(BlocksftError, match="lr: 0.02 -> 0.01.*add --allow-changes lr"):
        run_train(dataclasses.replace(config, resume=True, lr=1e-2))
    result = run_train(dataclasses.replace(config, resume=True, allow_changes="lr", lr=1e-2))
    assert result.steps == 8
    resumed = read_rows(config.logs_dir / "train_loss.csv")
    # From the resume on, the schedule is the one a run at lr 0.01 follows: the same step, half the LR.
    reference = tiny_config(folder, model_dir, data, "lower_from_start", total_steps=8, lr=1e-2)
    run_train(reference)
    expected = read_rows(reference.logs_dir / "train_loss.csv")
    assert [float(r["lr"]) for r in resumed[4:]] == pytest.approx([float(r["lr"]) for r in expected[4:]])
    assert [float(r["lr"]) for r in resumed[:4]] == pytest.approx([2 * float(r["lr"]) for r in expected[:4]])
    assert all(math.isfinite(float(r["loss"])) for r in resumed)
    saved = json.loads((config.logs_dir / "config.json").read_text())
    assert saved["config"]["lr"] == 1e-2
    assert saved["resumes"] == [{"step": 4, "changed": {"lr": [0.02, 0.01]}}]


def test_resuming_a_finished_run_does_nothing(blockwise_run):
    config, result = blockwise_run
    parent = config.logs_dir.parent
    before = sorted(p.name for p in parent.iterdir())
    csv_before = (config.logs_dir / "train_loss.csv").read_text()
    again = run_train(dataclasses.replace(config, resume=True))
    assert again.steps == 20 and again.exports == result.exports
    assert sorted(p.name for p in parent.iterdir()) == before  # no blockwise_step0020-v2
    assert (config.logs_dir / "train_loss.csv").read_text() == csv_before


def test_a_step_exported_before_an_interruption_is_replaced_not_copied(inputs, tmp_path):
    folder, model_dir, data = inputs
    config = tiny_config(tmp_path, model_dir, data, "redo", total_steps=8, checkpoint_every=4, save_every=6)
    with pytest.raises(Interrupted):
        run_train(config, callbacks=[InterruptAt(7)])  # exported step 6; resumable state at step 4
    first = (tmp_path / "redo_step0006" / "config.json").stat().st_mtime_ns
    result = run_train(dataclasses.replace(config, resume=True))  # trains steps 5-6 again
    assert [p.name for p in result.exports] == ["redo_step0006", "redo_step0008"]
    assert sorted(p.name for p in tmp_path.glob("redo_step*")) == ["redo_step0006", "redo_step0008"]
    assert (tmp_path / "redo_step0006" / "config.json").stat().st_mtime_ns != first
    recorded = json.loads((config.logs_dir / "exports.json").read_text())
    assert recorded == {"6": str(tmp_path / "redo_step0006"), "8": str(tmp_path / "redo_step0008")}
