"""The fast training paths give the plain path's loss and gradients (equivalences, no timings); length
grouping keeps the schedule's guarantees; the benchmarks and the GPU check script run on CPU with a
tiny shape."""

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_utils import read_rows, tiny_config, write_tiny_inputs

from blocksft.bench.eval import GSM8K_PROMPT_LENGTHS, benchmark, gsm8k_prompts, parse_args
from blocksft.bench.train import main
from blocksft.config.train import DEEPSPEED_DIR
from blocksft.errors import BlocksftError
from blocksft.objectives import get_objective, linear_cross_entropy, loss_weights, masked_ce_loss
from blocksft.testing import tiny_llada_model
from blocksft.train.block_schedule import BlockSchedule
from blocksft.train.engine import check_engine
from blocksft.train.items import Item, PadCollator, group_by_length, plan_items
from blocksft.train.lora import apply_lora
from blocksft.train.metrics import FlopModel
from blocksft.train.run import run_train
from blocksft.train.speed import compile_blocks
from blocksft.train.trainer import TrainStep

ROOT = Path(__file__).resolve().parents[1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----- The loss as a weighted sum, and the chunked head + CE -----


@pytest.mark.parametrize(
    "weighting,normalize",
    list(
        itertools.product(
            ["none", "inv_p"], ["per_sample_masked", "answer_len", "batch_tokens", "batch_masked"]
        )
    ),
)
def test_every_loss_is_a_weighted_sum_of_the_position_ces(weighting, normalize):
    logits = torch.randn(4, 10, 7, generator=gen(1)) * 3
    targets = torch.randint(0, 7, (4, 10), generator=gen(2))
    loss_mask = torch.rand(4, 10, generator=gen(3)) < 0.4
    loss_mask[1] = False  # a sample without loss tokens still counts in the per-sample means
    p, spans = torch.rand(4, generator=gen(4)) * 0.9 + 0.05, torch.tensor([10, 6, 3, 8])
    options = dict(p=p, weighting=weighting, normalize=normalize, answer_lens=spans)
    ce = F.cross_entropy(logits[loss_mask], targets[loss_mask], reduction="none")
    per_sample = torch.zeros(4).index_add_(0, loss_mask.nonzero()[:, 0], ce)  # [B] sums, the long way
    per_sample = per_sample / p if weighting == "inv_p" else per_sample
    counts, expected = loss_mask.sum(1).float(), None
    if normalize == "per_sample_masked":
        expected = (per_sample / counts.clamp(min=1)).mean()
    elif normalize == "batch_masked":
        expected = per_sample.sum() / counts.sum()
    elif normalize == "answer_len":
        expected = (per_sample / spans).mean()
    else:
        expected = per_sample.sum() / spans.sum()
    torch.testing.assert_close((ce * loss_weights(loss_mask, **options)).sum(), expected)
    torch.testing.assert_close(masked_ce_loss(logits, targets, loss_mask, **options), expected)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_head_and_ce_equal_the_plain_head_then_ce(chunk_size):
    hidden = torch.randn(23, 16, generator=gen(5), requires_grad=True)  # [N, D]
    head = (torch.randn(50, 16, generator=gen(6)) * 0.5).requires_grad_()  # [V, D]
    targets, weights = torch.randint(0, 50, (23,), generator=gen(7)), torch.rand(23, generator=gen(8))
    plain = (F.cross_entropy(hidden @ head.t(), targets, reduction="none") * weights).sum()
    (3.0 * plain).backward()  # a scaled loss: the backward pass must scale the stored gradients
    expected = plain.detach(), hidden.grad.clone(), head.grad.clone()
    hidden.grad = head.grad = None
    chunked = linear_cross_entropy(hidden, head, targets, weights, chunk_size=chunk_size)
    (3.0 * chunked).backward()
    for got, want in zip((chunked.detach(), hidden.grad, head.grad), expected):
        torch.testing.assert_close(got, want)
    frozen = linear_cross_entropy(hidden.detach(), head.detach(), targets, weights, chunk_size=chunk_size)
    torch.testing.assert_close(frozen, expected[0])  # no gradients asked: the loss alone
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, head, targets, weights, chunk_size=0)


def test_chunked_head_keeps_no_logits_for_the_backward_pass():
    hidden = torch.randn(64, 8, generator=gen(13), requires_grad=True)  # [N, D]
    head, targets, weights = (
        torch.randn(1000, 8, generator=gen(14)),
        torch.zeros(64, dtype=torch.long),
        torch.ones(64),
    )

    def saved_elements(loss_fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss_fn()
        return sum(sizes)

    plain = saved_elements(
        lambda: (F.cross_entropy(hidden @ head.t(), targets, reduction="none") * weights).sum()
    )
    chunked = saved_elements(lambda: linear_cross_entropy(hidden, head, targets, weights, chunk_size=16))
    assert plain >= 64 * 1000  # the plain path keeps [N, V] for its backward pass
    assert chunked <= 64 * 8  # the chunked one only the [N, D] gradient it already computed


def test_chunked_head_under_bf16_autocast_stays_close_to_the_plain_path():
    hidden = torch.randn(40, 32, generator=gen(9), requires_grad=True)
    head = torch.randn(100, 32, generator=gen(10)) * 0.2
    targets, weights = torch.randint(0, 100, (40,), generator=gen(11)), torch.full((40,), 0.025)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = (F.cross_entropy(F.linear(hidden, head).float(), targets, reduction="none") * weights).sum()
    plain.backward()
    plain_grad, hidden.grad = hidden.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(hidden, head, targets, weights, chunk_size=16)
    chunked.backward()
    assert chunked.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    torch.testing.assert_close(chunked, plain.detach(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(hidden.grad, plain_grad, rtol=2e-2, atol=2e-3)


# ----- The training step with each option against the plain one -----


def make_batch(tokenizer, lengths=((4, 13), (6, 21), (3, 9), (5, 17)), multiple_of=8, first_item=10):
    generator = gen(3)
    features = [
        {
            "full_ids": torch.randint(6, len(tokenizer), (prompt + answer,), generator=generator),
            "prompt_len": prompt,
            "block": k % 2,
            "sample": k,
            "item": first_item + k,
        }
        for k, (prompt, answer) in enumerate(lengths)
    ]
    return PadCollator(pad_id=1, multiple_of=multiple_of)(features)


def lora_model(tokenizer, *, full=False):
    model = tiny_llada_model(tokenizer, seed=0)
    if full:
        return model.train().requires_grad_(True)
    model, _ = apply_lora(model, targets="all", r=4, alpha=8, dropout=0.0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapters matter for the gradients
            torch.nn.init.normal_(param, std=0.1, generator=gen(12))
    return model.train()


def loss_and_grads(model, step, batch):
    model.zero_grad()
    loss, loss_mask = step(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), loss_mask, grads


def assert_same(result, expected, rtol=1e-5, atol=1e-6):
    (loss, mask, grads), (want_loss, want_mask, want_grads) = result, expected
    assert torch.equal(mask, want_mask) and mask.any()
    torch.testing.assert_close(loss, want_loss, rtol=rtol, atol=atol)
    assert grads.keys() == want_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("objective", ["blockwise", "fullseq"])
@pytest.mark.parametrize("full", [False, True], ids=["lora", "full-finetune"])
def test_chunked_ce_step_gives_the_loss_and_gradients_of_the_plain_step(tokenizer, objective, full):
    batch = make_batch(tokenizer)
    model = lora_model(tokenizer, full=full)
    target = get_objective(
        objective, mask_id=2, block_size=8, loss_weighting="inv_p", loss_normalize="answer_len"
    )
    plain = loss_and_grads(model, TrainStep(target, seed=5, sparse_logits=False), batch)
    for chunk in (3, 1000):
        assert_same(loss_and_grads(model, TrainStep(target, seed=5, ce_chunk_size=chunk), batch), plain)
    with pytest.raises(BlocksftError, match="needs --sparse-logits"):
        TrainStep(target, seed=5, sparse_logits=False, ce_chunk_size=8)


def test_gradient_checkpointing_with_lora_gives_the_same_step(tokenizer):
    batch = make_batch(tokenizer)
    model = lora_model(tokenizer)
    step = TrainStep(get_objective("blockwise", mask_id=2, block_size=8), seed=5)
    plain = loss_and_grads(model, step, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(block.gradient_checkpointing for block in model.get_base_model().blocks)
    assert_same(loss_and_grads(model, step, batch), plain)


def test_a_batch_without_padding_drops_its_attention_mask_and_keeps_its_loss(tokenizer):
    batch = make_batch(tokenizer, lengths=((4, 12), (6, 10), (3, 13)))  # all 16 long: no padding
    assert batch.has_padding is False and batch.attention_mask.all()
    assert make_batch(tokenizer).has_padding is True
    model = lora_model(tokenizer)
    seen = []
    model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    step = TrainStep(get_objective("blockwise", mask_id=2, block_size=8), seed=5)
    without_mask = loss_and_grads(model, step, batch)
    with_mask = loss_and_grads(model, step, dataclasses.replace(batch, has_padding=True))
    assert seen[0] is None and torch.equal(seen[1], batch.attention_mask)
    assert_same(without_mask, with_mask)


def test_compiled_blocks_trace_with_lora_and_give_the_same_step(tokenizer):
    batch = make_batch(tokenizer)
    model = lora_model(tokenizer)
    step = TrainStep(get_objective("fullseq", mask_id=2), seed=5)
    plain = loss_and_grads(model, step, batch)
    compile_blocks(model, backend="eager")  # the tracing without code generation (minutes on CPU)
    assert all("forward" in vars(block) for block in model.get_base_model().blocks)
    assert_same(loss_and_grads(model, step, batch), plain)
    shorter = make_batch(tokenizer, lengths=((4, 5), (3, 6)), first_item=0)  # another length: dynamic
    compiled = step(model, shorter)[0]
    for block in model.get_base_model().blocks:
        del block.forward  # back to eager
    torch.testing.assert_close(compiled, step(model, shorter)[0])


# ----- Length-grouped batching -----


def epoch_items(num_samples, epochs, seed=3):
    blocks = torch.randint(1, 4, (num_samples,), generator=gen(seed)).tolist()
    return plan_items(BlockSchedule(blocks, seed=seed), epochs, blockwise=True)


def test_grouping_keeps_every_epochs_items_and_groups_lengths_in_micro_batches():
    items = epoch_items(50, 3)[:130]  # three epochs, the last one cut (as a run's last step does)
    lengths = torch.randint(20, 250, (50,), generator=gen(4)).tolist()
    world, micro = 2, 4
    grouped = group_by_length(items, lengths, slice_size=world * micro, window=3 * world * micro, seed=7)
    assert grouped == group_by_length(items, lengths, slice_size=world * micro, window=24, seed=7)
    assert grouped != group_by_length(items, lengths, slice_size=world * micro, window=24, seed=8)
    assert [i.epoch for i in grouped] == [i.epoch for i in items]  # epochs stay where they were
    for epoch in range(3):  # ... with exactly their items: every (sample, block) pair once
        assert Counter(i for i in grouped if i.epoch == epoch) == Counter(
            i for i in items if i.epoch == epoch
        )

    def padded_tokens(order):
        batches = [order[k : k + micro] for k in range(0, len(order), micro)]
        return sum(len(b) * max(lengths[i.sample] for i in b) for b in batches)

    assert padded_tokens(grouped) < 0.85 * padded_tokens(items)
    # Windows of 24 items inside an epoch: within each step-slice (one micro-batch per rank) the
    # lengths come from one sorted run, so no slice mixes across a window.
    first_epoch_end = sum(i.epoch == 0 for i in items)
    for start in range(0, 24, world * micro):
        window = sorted((lengths[i.sample] for i in items[:24]), reverse=True)
        chunk = sorted((lengths[i.sample] for i in grouped[start : start + world * micro]), reverse=True)
        assert any(window[k : k + len(chunk)] == chunk for k in range(len(window)))
    assert first_epoch_end % 24 != 0  # the epoch boundary cuts a window here, which the checks above cover


def test_each_rank_takes_whole_micro_batches_of_grouped_items():
    items = [Item(sample=k, epoch=0, block=0) for k in range(64)]
    lengths = list(range(10, 74))
    grouped = group_by_length(items, lengths, slice_size=2 * 4, window=64, seed=0)
    batches = [grouped[k : k + 4] for k in range(0, 64, 4)]
    ranks = [batches[r::2] for r in range(2)]  # the data loader's round robin over ranks
    seen = [i.sample for rank in ranks for batch in rank for i in batch]
    assert sorted(seen) == list(range(64))
    for step in range(8):  # the two ranks' micro-batches of one step hold 8 consecutive lengths
        step_lengths = sorted(lengths[i.sample] for rank in ranks for i in rank[step])
        assert step_lengths[-1] - step_lengths[0] == 7


# ----- run_train with the options -----


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("perf")
    model_dir, data = write_tiny_inputs(folder, n_samples=48)
    return folder, model_dir, data


def run_batches(config):
    result = run_train(config)
    lines = (config.logs_dir / "batches.jsonl").read_text().splitlines()
    return result, [json.loads(line) for line in lines]


def test_a_grouped_chunked_checkpointed_run_trains_the_same_pairs_with_less_padding(inputs):
    folder, model_dir, data = inputs
    common = dict(total_steps=4, epochs=2, lora_dropout=0.0, checkpoint_every=0)
    plain, plain_batches = run_batches(tiny_config(folder, model_dir, data, "plain", **common))
    fast_config = tiny_config(
        folder,
        model_dir,
        data,
        "fast",
        group_by_length=True,
        length_group_steps=2,
        ce_chunk_size=8,
        gradient_checkpointing=True,
        **common,
    )
    fast, fast_batches = run_batches(fast_config)
    assert fast.steps == plain.steps == 4

    def pairs(batches):
        return sorted((s, b) for batch in batches for s, b in zip(batch["samples"], batch["blocks"]))

    assert pairs(fast_batches) == pairs(plain_batches)
    padded = [
        sum(int(r["padded_tokens"]) for r in read_rows(c.logs_dir / "train_loss.csv")) for c in (plain, fast)
    ]
    assert padded[1] < padded[0]
    assert fast.model is not None and all(
        block.gradient_checkpointing for block in fast.model.get_base_model().blocks
    )


def test_chunked_ce_is_refused_under_zero3_and_without_sparse_logits(inputs):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, "zero3", ce_chunk_size=64)
    with pytest.raises(BlocksftError, match="ZeRO-3"):
        check_engine(config, str(DEEPSPEED_DIR / "zero3.json"))
    check_engine(config, str(DEEPSPEED_DIR / "zero2.json"))
    with pytest.raises(ValueError, match="needs sparse_logits"):
        dataclasses.replace(config, sparse_logits=False)


def test_flop_count_gives_attention_a_backward_of_twice_its_forward():
    model = FlopModel(body_params=100, trained_params=10, head_params=50, n_layers=2, d_model=4)
    attention = 4 * 2 * 4 * 8 * 16  # forward: 4 * layers * d_model * context * tokens
    weights = 2 * 100 * 16 + 2 * 50 * 3  # body at 16 tokens, head at 3 positions
    assert model.step_flops(16, 8, 3) == 2 * weights + 2 * 10 * 16 + 3 * attention


# ----- The benchmarks -----


def test_train_benchmark_compares_the_paths_with_identical_losses(capsys):
    argv = [
        "--tiny",
        "--micro-batch",
        "4",
        "--max-len",
        "64",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--lora-r",
        "4",
    ]
    paths = ["reference", "ours", "paper", "full-logits", "chunked-ce", "grouped", "ours+chunked+grouped"]
    assert main(argv + ["--paths", *paths, "--objective", "fullseq"]) == 0
    out = capsys.readouterr().out
    for path in paths:
        assert f"| {path} | " in out
    assert out.count("-> same") == len(paths) - 1 and "DIFFERENT" not in out


def run_bench_script(script: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``bench/<script>`` as a user does, with ``OUT`` set; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_gpu_check_script_runs_end_to_end_on_cpu_with_a_tiny_shape(tmp_path):
    done = run_bench_script("gpu_check.py", tmp_path, "--tiny")
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    train = result["train"]
    assert set(train["paths"]) == {"reference", "ours", "eager", "fast"}
    assert all(check["same"] for check in train["checks"]) and len(train["checks"]) == 3
    assert train["paths"]["reference"]["settings"].startswith("eager, no checkpointing, padded to max_len")
    assert train["paths"]["fast"]["settings"].startswith("compiled, no checkpointing, grouped")
    assert "torch.compile off (auto: CPU)" in train["choices"]["ours"]  # CPU: what always ran
    rows = result["decode"]["rows"]
    assert {(r["mode"], r["decode"]) for r in rows} == {
        (mode, decode)
        for mode in ("plain", "dual", "threshold 0.9", "dual + threshold 0.9")
        for decode in ("loop", "graph")
    }
    for mode in ("plain", "threshold 0.9"):  # one row: the graph step decodes what the loop decodes
        loop, graph = (
            next(r for r in rows if (r["mode"], r["decode"]) == (mode, d)) for d in ("loop", "graph")
        )
        assert graph["nfe"] == loop["nfe"] and graph["agree"] == loop["agree"]
    assert {r["batch"] for key in ("decode_batch8", "decode_batch32") for r in result[key]["rows"]} == {2, 3}
    default, fast = (result[key]["rows"][0] for key in ("eval_default", "eval_fast"))
    assert (
        default["problems_per_minute"] > 0 and fast["mean_nfe_per_problem"] < default["mean_nfe_per_problem"]
    )
    assert "target: ours >= 2.0x the reference" in done.stdout and "fast / default" in done.stdout


def test_eval_benchmark_decodes_gsm8k_prompts_or_prompts_of_their_lengths(tmp_path, capsys):
    rows = [
        {
            "question": "A farmer has 12 cows and buys 7 more. How many cows does he have?",
            "answer": "#### 19",
        },
        {
            "question": "Mia reads 15 pages a day for 4 days. How many pages does she read?",
            "answer": "#### 60",
        },
    ]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = parse_args(["--tiny", "--problems", "3", "--data", str(data)])
    prompts, source = gsm8k_prompts(args, vocab=512)
    assert source == str(data) and len(prompts) == 3 and prompts[2] == prompts[0]  # the rows, cycled
    synthetic, source = gsm8k_prompts(parse_args(["--problems", "200", "--data", "none"]), vocab=512)
    lengths = [len(p) for p in synthetic]
    assert source.startswith("random ids") and GSM8K_PROMPT_LENGTHS[0] <= min(lengths)
    assert max(lengths) <= GSM8K_PROMPT_LENGTHS[-1] and 120 < sum(lengths) / len(lengths) < 145
    argv = ["--tiny", "--problems", "2", "--gen-length", "16", "--block-length", "8", "--data", str(data)]
    result = benchmark(argv + ["--default-batch", "1", "--fast-batch", "2"])
    assert [r["setting"] for r in result["rows"]] == ["default", "fast"]
    assert result["rows"][0]["mean_nfe_per_problem"] == 16 and result["rows"][0]["speed_up"] == 1.0
    assert (
        result["rows"][1]["sampler"]["decode"] == "graph"
        and "throughput, not accuracy" in result["description"]
    )


def test_gpu_train_cli_script_trains_and_exports_on_cpu_with_a_tiny_shape(tmp_path):
    run_bench_script("gpu_train_cli.py", tmp_path, "--tiny", "--steps", "3")
    result = json.loads((tmp_path / "gpu_train_cli.json").read_text())
    assert len(result["loss"]) == 3 and all(math.isfinite(x) for x in result["loss"])
    assert result["budget"]["steps"] == 3 and result["budget"]["samples"] == 3 * 4
    assert result["merged_checkpoint_gib"] > 0
