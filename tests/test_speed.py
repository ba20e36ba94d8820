"""The training run's speed settings: ``auto`` resolved per device (CPU: what always ran), the peak
memory estimate against the H200 measurements, length grouping only where it keeps the recipe's
semantics, compiling that falls back to eager with one note, and what config.json records."""

import functools
import importlib.util
import json

import pytest
import torch._dynamo
import torch.utils._triton
from train_utils import read_rows, tiny_config, write_tiny_inputs

import blocksft.train.run as run
import blocksft.train.speed as speed
from blocksft.config.flags import build_config, config_to_dict
from blocksft.config.train import TrainConfig, config_differences, is_on, normalise_switch, resolve_recipe
from blocksft.objectives import get_objective
from blocksft.testing import tiny_llada_model
from blocksft.train.choices import format_choices
from blocksft.train.engine import resolve_deepspeed, resolve_dtype, resolved_config
from blocksft.train.lora import apply_lora
from blocksft.train.run import run_train
from blocksft.train.speed import (
    estimate_training_memory,
    needs_checkpointing,
    resolve_checkpointing,
    resolve_compile,
    resolve_grouping,
    run_memory_estimate,
)

GIB = 2**30


# ----- The memory estimate against what one H200 measured (bench/RESULTS.md) -----


def llada_8b_lora_estimate(checkpointing: bool):
    """LLaDA-8B (bf16) with LoRA r256 on q, k, v, up (float32 adapters), micro-batch 32 x 256,
    blockwise (at most 32 loss positions per sample), as bench/gpu_check.py measured it."""
    d, mlp, layers, vocab, r = 4096, 12288, 32, 126464, 256
    base = layers * (4 * d * d + 3 * d * mlp + 2 * d) + 2 * vocab * d + d
    lora = layers * (3 * (r * d + d * r) + (r * d + mlp * r))
    assert round(lora / 1e6, 1) == 335.5 and round((base + lora) / 1e9, 2) == 8.35  # RESULTS' counts
    return estimate_training_memory(
        weight_bytes=2 * base + 4 * lora,
        trainable_bytes=4 * lora,
        n_layers=layers,
        d_model=d,
        mlp_hidden=mlp,
        vocab=vocab,
        tokens=32 * 256,
        logit_positions=32 * 32,
        checkpointing=checkpointing,
    )


@pytest.mark.parametrize("checkpointing, measured_gib", [(False, 66.5), (True, 23.0)])
def test_memory_estimate_meets_the_h200_measurements_from_above(checkpointing, measured_gib):
    estimate = llada_8b_lora_estimate(checkpointing)
    assert measured_gib <= estimate.total / GIB <= 1.05 * measured_gib
    assert round(estimate.weights / GIB, 2) == 16.18  # 8.02 B bf16 + 335.5 M float32
    assert round(estimate.optimizer / GIB, 2) == 3.75  # gradients and two AdamW moments, float32


def test_checkpointing_is_needed_only_where_the_step_does_not_fit():
    without = llada_8b_lora_estimate(False)  # 69.1 GiB
    assert not needs_checkpointing(without, int(139 * GIB))  # an H200
    assert not needs_checkpointing(without, int(79 * GIB))  # an 80 GB H100: 69.1 < 0.9 x 79
    assert needs_checkpointing(without, int(75 * GIB))  # less free: no margin left
    assert needs_checkpointing(without, int(39 * GIB))  # a 40 GB A100 ...
    assert not needs_checkpointing(llada_8b_lora_estimate(True), int(39 * GIB))  # ... where it fits with


def test_estimate_terms_on_a_hand_made_shape():
    shape = dict(
        weight_bytes=1000,
        trainable_bytes=10,
        n_layers=3,
        d_model=2,
        mlp_hidden=5,
        vocab=7,
        tokens=4,
        logit_positions=2,
    )
    estimate = estimate_training_memory(**shape, checkpointing=False)
    per_block = 4 * (24 * 2 + 8 * 5)  # tokens x (24 d_model + 8 mlp) = 352
    assert (estimate.weights, estimate.optimizer, estimate.head) == (1000, 30, 2 * 7 * 10)
    assert estimate.activations == 3 * per_block
    kept = estimate_training_memory(**shape, checkpointing=True)
    assert kept.activations == 3 * 4 * 2 * 2 + per_block and kept.head == 0  # inputs kept + one block


# ----- Switches: auto/on/off, older booleans -----


def test_switches_read_flags_yaml_values_and_older_booleans():
    assert [normalise_switch(v) for v in (True, False, "AUTO", "on", "false", "true")] == [
        "on",
        "off",
        "auto",
        "on",
        "off",
        "on",
    ]
    with pytest.raises(ValueError, match="auto, on or off"):
        normalise_switch("maybe")
    config = TrainConfig(gradient_checkpointing=True, torch_compile=False)
    assert (config.gradient_checkpointing, config.torch_compile, config.group_by_length) == (
        "on",
        "off",
        "auto",
    )
    with pytest.raises(ValueError, match="before it was resolved"):
        is_on("auto")
    # A run saved before the switches (booleans, or no key at all) resumes with the same grouping.
    current = {**TrainConfig().__dict__, "group_by_length": "off"}
    saved = {k: v for k, v in current.items() if k != "group_by_length"}
    assert "group_by_length" not in config_differences(saved, current)
    assert "group_by_length" not in config_differences({**saved, "group_by_length": False}, current)
    assert config_differences({**saved, "group_by_length": True}, current)["group_by_length"] == ("on", "off")


def test_on_cpu_every_auto_is_what_always_ran():
    config = TrainConfig()
    choices = [
        resolve_grouping(config, on_gpu=False),
        resolve_compile(config, on_gpu=False),
        resolve_checkpointing(config, False, None, None),
    ]
    assert [c.ran for c in choices] == ["off", "off", "off"]
    assert format_choices(choices) == (
        "speed: length grouping off (auto: CPU), torch.compile off (auto: CPU), "
        "gradient checkpointing off (auto: CPU)"
    )
    asked = TrainConfig(group_by_length="on", torch_compile="on", gradient_checkpointing="on")
    assert resolve_grouping(asked, on_gpu=False).text() == "length grouping on (as asked)"
    assert resolve_compile(asked, on_gpu=False).ran == "on"
    assert resolve_checkpointing(asked, False, None, None).ran == "on"


def test_grouping_is_automatic_only_where_it_keeps_the_recipes_semantics():
    assert resolve_grouping(TrainConfig(), on_gpu=True).ran == "on"
    assert resolve_grouping(TrainConfig(loss_normalize="answer_len"), on_gpu=True).ran == "on"
    for recipe in ("paper_blockwise", "paper_fullseq"):
        choice = resolve_grouping(build_config(TrainConfig, None, resolve_recipe(recipe)), on_gpu=True)
        assert choice.ran == "off" and "padded to --max-len" in choice.why and "attended" in choice.why
    for blocker, why in [
        (dict(loss_normalize="batch_tokens"), "normalised by batch_tokens"),
        (dict(loss_normalize="batch_masked"), "normalised by batch_masked"),
        (dict(supervise_padding=True), "padding trained"),
        (dict(attend_padding=True), "padding attended"),
    ]:
        choice = resolve_grouping(TrainConfig(**blocker), on_gpu=True)
        assert choice.ran == "off" and why in choice.why


def test_compile_and_checkpointing_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    assert resolve_compile(TrainConfig(), on_gpu=True).text() == "torch.compile on (auto: CUDA)"
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    missing = resolve_compile(TrainConfig(), on_gpu=True)
    assert missing.ran == "off" and "Triton is not installed" in missing.why
    estimate = llada_8b_lora_estimate(False)
    fits = resolve_checkpointing(TrainConfig(), True, estimate, int(139 * GIB))
    assert (
        fits.text() == "gradient checkpointing off (auto: estimated peak 69.1 GiB without it, 139.0 GiB free)"
    )
    assert resolve_checkpointing(TrainConfig(), True, estimate, int(40 * GIB)).ran == "on"
    assert resolve_checkpointing(TrainConfig(gradient_checkpointing="off"), True, estimate, 0).ran == "off"


# ----- run_train: the line, config.json, and compiling that falls back -----


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed")
    model_dir, data = write_tiny_inputs(folder, n_samples=16)
    return folder, model_dir, data


def test_a_cpu_run_prints_its_choices_and_records_them(inputs, capsys):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "auto", total_steps=1, checkpoint_every=0)
    result = run_train(config)
    assert "speed: length grouping off (auto: CPU), torch.compile off (auto: CPU)" in capsys.readouterr().err
    saved = json.loads((result.logs_dir / "config.json").read_text())
    assert {saved["config"][k] for k in ("torch_compile", "gradient_checkpointing", "group_by_length")} == {
        "off"
    }
    assert saved["derived"]["speed"]["torch_compile"] == {"asked": "auto", "ran": "off", "why": "auto: CPU"}
    assert not any(block.gradient_checkpointing for block in result.model.get_base_model().blocks)


def test_a_cpu_run_prints_and_records_what_dtype_and_deepspeed_auto_became(inputs, capsys):
    folder, model_dir, data = inputs
    config = tiny_config(
        folder, model_dir, data, "engine", total_steps=1, checkpoint_every=0, deepspeed="auto"
    )
    assert (config.dtype, config.deepspeed) == ("auto", "auto")
    result = run_train(config)
    assert "engine: dtype fp32 (auto: CPU), DeepSpeed none (auto: CPU)" in capsys.readouterr().err
    saved = json.loads((result.logs_dir / "config.json").read_text())
    assert (saved["config"]["dtype"], saved["config"]["deepspeed"]) == ("fp32", None)  # what ran
    assert saved["derived"]["engine"] == {
        "dtype": {"asked": "auto", "ran": "fp32", "why": "auto: CPU"},
        "deepspeed": {"asked": "auto", "ran": "none", "why": "auto: CPU"},
    }


def test_engine_auto_on_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype(TrainConfig(), on_gpu=True).text() == "dtype bf16 (auto: the GPU computes in bf16)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_dtype(TrainConfig(), on_gpu=True).text() == "dtype fp32 (auto: the GPU has no bf16)"
    assert resolve_dtype(TrainConfig(dtype="fp16"), on_gpu=True).text() == "dtype fp16 (as asked)"
    installed = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "deepspeed" else installed(name)
    )
    missing = resolve_deepspeed(TrainConfig(), on_gpu=True)
    assert (missing.ran, missing.why) == ("none", "auto: deepspeed is not installed")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert (
        resolve_deepspeed(TrainConfig(), on_gpu=True).text()
        == "DeepSpeed zero2 (auto: GPUs and deepspeed installed)"
    )
    assert resolve_deepspeed(TrainConfig(deepspeed="none"), on_gpu=True).text() == "DeepSpeed none (as asked)"
    resolved = resolved_config(TrainConfig(), [missing, resolve_dtype(TrainConfig(), on_gpu=False)])
    assert (resolved.deepspeed, resolved.dtype) == (None, "fp32")


def test_a_run_saved_with_auto_dtype_and_deepspeed_resumes_with_what_they_resolve_to():
    current = config_to_dict(TrainConfig(dtype="fp32", deepspeed=None))  # resolved, as a run records it
    older = {**current, "dtype": "auto", "deepspeed": "auto"}  # config.json before they were resolved
    assert config_differences(older, current) == {}
    assert config_differences({**current, "dtype": "bf16"}, current) == {"dtype": ("bf16", "fp32")}


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no working compiler here")


def test_compiling_that_fails_falls_back_to_eager_with_one_note(inputs, capsys, monkeypatch):
    folder, model_dir, data = inputs
    common = dict(total_steps=2, lora_dropout=0.0, checkpoint_every=0)
    eager = run_train(tiny_config(folder, model_dir, data, "eager", torch_compile="off", **common))
    # A compiler that fails the way a missing toolchain does (dynamo wraps it: BackendCompilerFailed).
    monkeypatch.setattr(run, "compile_blocks", functools.partial(run.compile_blocks, backend=failing_backend))
    fell_back = run_train(tiny_config(folder, model_dir, data, "compile", torch_compile="on", **common))
    err = capsys.readouterr().err
    assert err.count("note: torch.compile failed (BackendCompilerFailed") == 1
    assert "RuntimeError: no working compiler here); the blocks run eagerly" in err
    speed = json.loads((fell_back.logs_dir / "config.json").read_text())["derived"]["speed"]
    assert speed["torch_compile"]["ran"] == "off" and "failed" in speed["torch_compile"]["why"]
    losses = [
        [float(r["loss"]) for r in read_rows(r.logs_dir / "train_loss.csv")] for r in (eager, fell_back)
    ]
    assert losses[0] == losses[1]
    assert not any("forward" in vars(block) for block in fell_back.model.get_base_model().blocks)


def test_a_runs_estimate_counts_its_own_model_and_batch_and_decides_on_a_gpu(tokenizer, monkeypatch):
    model, _ = apply_lora(tiny_llada_model(tokenizer), targets="reference", r=4, alpha=8, dropout=0.0)
    vocab, shape = model.config.embedding_size, model.config
    config = TrainConfig(micro_batch=4, max_len=64, block_size=8)
    estimate = run_memory_estimate(model, config, blockwise=True)
    params = list(model.parameters())
    assert estimate.weights == sum(p.numel() * p.element_size() for p in params)
    assert estimate.optimizer == 3 * sum(p.numel() * 4 for p in params if p.requires_grad)  # float32 adapters
    assert estimate.activations == shape.n_layers * 4 * 64 * (24 * shape.d_model + 8 * shape.mlp_hidden_size)
    assert estimate.head == 4 * 8 * vocab * 10  # at most a block of loss positions per sample
    assert (
        run_memory_estimate(model, config, blockwise=False).head == 4 * 32 * vocab * 10
    )  # half the positions
    chunked = TrainConfig(micro_batch=4, max_len=64, ce_chunk_size=16)
    assert run_memory_estimate(model, chunked, blockwise=False).head == 16 * vocab * 10
    full = TrainConfig(micro_batch=4, max_len=64, sparse_logits=False)
    assert run_memory_estimate(model, full, blockwise=True).head == 4 * 64 * vocab * 10
    objective = get_objective("blockwise", mask_id=2, block_size=8)
    for free, wanted in ((2 * estimate.total, "off"), (estimate.total, "on")):
        monkeypatch.setattr(speed, "free_device_memory", lambda free=free: free)
        _, checkpointing = speed.resolve_model_speed(config, model, objective, on_gpu=True)
        assert checkpointing.ran == wanted and "estimated peak" in checkpointing.why
