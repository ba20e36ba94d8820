"""The paper recipes train as the reference scripts do: the learning rate of every step against
DeepSpeed's own WarmupCosineLR, batches and loss against the reference's path; LLaDA's supervised
padding; the two warmup curves against the libraries they come from."""

import argparse
import math

import pytest
import torch
from torch import nn
from train_utils import read_rows, write_tiny_inputs
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from blocksft.bench.noise import synthetic_examples
from blocksft.config.flags import build_config
from blocksft.config.train import TrainConfig, config_differences, resolve_recipe
from blocksft.objectives import NoisedBatch
from blocksft.reference import (
    ReferenceBlockwiseDataset,
    ReferenceFullSeqDataset,
    reference_collate,
    reference_loss,
)
from blocksft.testing import tiny_llada_model
from blocksft.train.items import Item, ItemDataset, PadCollator, block_schedule, plan_run
from blocksft.train.lr_schedule import WarmupCosine, lr_multiplier, warmup_steps_for
from blocksft.train.run import build_collator, build_objective, build_train_step, lr_schedule_of, run_train

MASK, PAD = 2, 1  # the tiny tokenizer's mask and pad (EOS) ids
PEAK = 1e-5


def recipe(name: str, **flags) -> TrainConfig:
    """A shipped recipe under flags, as ``blocksft train --config NAME --flag value`` builds it."""
    return build_config(TrainConfig, argparse.Namespace(**flags), resolve_recipe(name))


def stepped_lrs(scheduler_factory, total_steps: int) -> list[float]:
    """The learning rate each optimizer step runs at, the scheduler stepped after the optimizer
    (as DeepSpeed's engine and the Trainer both step it)."""
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def deepspeed_lrs(total_steps: int, warmup_ratio: float = 0.1) -> list[float]:
    """DeepSpeed's WarmupCosineLR as train_blockwise.py / train_fullseq.py configure it."""
    lr_schedules = pytest.importorskip("deepspeed.runtime.lr_schedules")

    def factory(optimizer):
        return lr_schedules.WarmupCosineLR(
            optimizer,
            total_num_steps=int(total_steps),
            warmup_min_ratio=0,
            warmup_num_steps=int(warmup_ratio * total_steps),
            cos_min_ratio=0.01,
        )  # warmup_type left at DeepSpeed's default, as the reference leaves it

    return stepped_lrs(factory, total_steps)


# ----- Learning rate ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,steps", [("paper_blockwise", 200), ("paper_fullseq", 300)])
def test_paper_recipes_run_deepspeeds_warmup_cosine_learning_rate_at_every_step(name, steps):
    config = recipe(name)
    records = synthetic_examples(config.max_samples, max_len=config.max_len, vocab=1000)
    objective = build_objective(config, MASK)
    _, _, planned = plan_run(config, objective, records, world_size=1)
    assert planned == steps  # the reference's count on one GPU
    ours = stepped_lrs(lambda optimizer: lr_schedule_of(config).build(optimizer, planned), planned)
    assert ours == deepspeed_lrs(steps)
    # DeepSpeed steps after the optimizer from iteration -1: steps 1 and 2 both run at 0.
    assert ours[:3] == [0.0, 0.0, PEAK * math.log(2) / math.log(steps // 10)]
    assert ours[steps // 10] == PEAK  # step warmup + 1: log(warmup) / log(warmup)


def test_a_paper_blockwise_run_logs_deepspeeds_learning_rate_at_every_step(tmp_path):
    model_dir, data = write_tiny_inputs(tmp_path, n_samples=80)
    config = recipe(
        "paper_blockwise",
        model=str(model_dir),
        data=str(data),
        ckpt_dir=str(tmp_path / "run"),
        micro_batch=2,
        max_samples=80,
        lora_r=8,
        lora_alpha=16,
        use_cpu=True,
    )

    result = run_train(config)
    rows = read_rows(result.logs_dir / "train_loss.csv")
    assert result.steps == len(rows) == 40
    assert [float(row["lr"]) for row in rows] == deepspeed_lrs(40)


def test_log_warmup_is_deepspeeds_and_linear_warmup_is_transformers_at_every_size():
    for total in [*range(10, 70), 97, 200, 300, 1000]:
        for ratio in (0.1, 0.05, 0.3):
            if int(ratio * total) == 0:
                continue  # DeepSpeed refuses a warmup of 0 steps
            schedule = WarmupCosine(ratio, 0.01, "log")
            ours = stepped_lrs(lambda optimizer, s=schedule, t=total: s.build(optimizer, t), total)
            assert ours == deepspeed_lrs(total, ratio), (total, ratio)
    for total in range(1, 70):
        for ratio in (0.0, 0.03, 0.1, 0.25):
            warmup = math.ceil(total * ratio)  # TrainingArguments.get_warmup_steps for a ratio

            def stock(optimizer, total=total, warmup=warmup):
                return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=0.01)

            schedule = WarmupCosine(ratio, 0.01, "linear")
            ours = stepped_lrs(lambda optimizer, s=schedule, t=total: s.build(optimizer, t), total)
            assert ours == stepped_lrs(stock, total), (total, ratio)


def test_warmup_lengths_and_multipliers_by_hand():
    assert warmup_steps_for(200, 0.1, "log") == warmup_steps_for(200, 0.1, "linear") == 20
    assert warmup_steps_for(15, 0.1, "log") == 2  # int(1.5) = 1, raised to DeepSpeed's minimum of 2
    assert warmup_steps_for(15, 0.1, "linear") == 2  # ceil(1.5)
    assert warmup_steps_for(15, 0.0, "log") == 0
    common = dict(total_steps=200, warmup_steps=20, min_ratio=0.01)
    linear = [lr_multiplier(s, warmup_type="linear", **common) for s in range(22)]
    log = [lr_multiplier(s, warmup_type="log", **common) for s in range(22)]
    assert linear[:3] == [0.0, 0.05, 0.1] and linear[20] == 1.0
    assert log[:3] == [0.0, 0.0, math.log(2) / math.log(20)] and log[20] == 1.0
    assert log[21] == linear[21] == 0.01 + 0.99 * (1 + math.cos(math.pi / 180)) / 2
    # Over the 20 warmup steps the reference's log curve runs at 0.66 of the peak on average,
    # linear at 0.475.
    assert round(sum(log[:20]) / 20, 2) == 0.66 and math.isclose(sum(linear[:20]) / 20, 0.475)
    no_warmup = dict(total_steps=10, warmup_steps=0, min_ratio=0.0)
    for warmup_type in ("log", "linear"):  # no warmup: the cosine from the first step
        assert lr_multiplier(0, warmup_type=warmup_type, **no_warmup) == 1.0
        assert lr_multiplier(10, warmup_type=warmup_type, **no_warmup) == 0.0
    with pytest.raises(ValueError, match="warmup_type"):
        WarmupCosine(0.1, 0.01, "cosine")


def test_a_run_saved_before_warmup_type_existed_resumes_with_the_default():
    saved = {"warmup_ratio": 0.1, "lr": 1e-5}  # an older config.json: no warmup_type
    current = {**saved, "warmup_type": "linear"}
    assert "warmup_type" not in config_differences(saved, current)
    assert config_differences(saved, {**current, "warmup_type": "log"})["warmup_type"] == ("linear", "log")


# ----- Batches and loss ---------------------------------------------------------------------------


class ForwardSpy(nn.Module):
    """The model, remembering the attention mask of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.masks = model, []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.masks.append(attention_mask)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@pytest.mark.parametrize("name", ["paper_blockwise", "paper_fullseq"])
def test_paper_recipe_batches_and_loss_are_the_reference_scripts(tokenizer, name):
    config = recipe(name)
    objective = build_objective(config, MASK)
    records = synthetic_examples(6, max_len=config.max_len, seed=1, vocab=len(tokenizer))
    for record in records:  # no special ids inside the text
        record["full_ids"] = record["full_ids"].clamp(min=6)
    ids = dict(max_len=config.max_len, mask_id=MASK, pad_id=PAD, eps=config.mask_eps, seed=3)
    if objective.blockwise:
        reference = ReferenceBlockwiseDataset(records, block_size=config.block_size, **ids)
    else:
        reference = ReferenceFullSeqDataset(records, **ids)
    theirs = reference_collate([reference[i] for i in range(len(records))])
    blocks = theirs["blk_index"].tolist() if objective.blockwise else [0] * len(records)
    items = [Item(sample=i, epoch=0, block=b) for i, b in enumerate(blocks)]

    # The same ids, padded to 256 with EOS; no attention mask reaches the model.
    dataset = ItemDataset(records, items)
    batch = build_collator(config, objective, PAD)([dataset[k] for k in range(len(items))])
    assert batch.input_ids.shape == (len(records), 256)
    assert torch.equal(batch.input_ids, theirs["input_ids"])
    model = tiny_llada_model(tokenizer, seed=0)
    spy = ForwardSpy(model)
    shared = NoisedBatch(theirs["noisy_ids"], theirs["mask_flags"], torch.ones(len(records)))
    with torch.no_grad():
        ours = build_train_step(config, objective).loss(spy, batch, shared)
        expected = reference_loss(model, theirs["noisy_ids"], theirs["input_ids"], theirs["mask_flags"])
    assert spy.masks == [None]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)

    # Our defaults differ exactly there: each batch padded to its longest record, padding masked.
    default = TrainConfig(objective=config.objective)
    short = build_collator(default, objective, PAD)([dataset[k] for k in range(len(items))])
    assert short.input_ids.shape[1] < 256 and short.has_padding
    assert not default.attend_padding and default.warmup_type == "linear"


# ----- Supervised padding (LLaDA's SFT recipe) ----------------------------------------------------


def features(tokenizer, lengths, blocks=None):
    generator = torch.Generator().manual_seed(3)
    return [
        {
            "full_ids": torch.randint(6, len(tokenizer), (prompt + answer,), generator=generator),
            "prompt_len": prompt,
            "block": 0 if blocks is None else blocks[k],
            "sample": k,
            "item": k,
        }
        for k, (prompt, answer) in enumerate(lengths)
    ]


def test_supervised_padding_pads_each_batch_to_its_longest_record_and_completes_last_blocks(tokenizer):
    rows = features(tokenizer, ((4, 13), (6, 21), (3, 9)))  # lengths 17, 27, 12
    batch = PadCollator(pad_id=PAD, supervise_padding=True)(rows)
    assert batch.input_ids.shape == (3, 27)  # the longest, not rounded to 8, not --max-len
    assert batch.attention_mask.all() and not batch.has_padding
    assert (batch.input_ids[0, 17:] == PAD).all()
    # Blockwise: every row reaches its last block's end (4 + 16, 6 + 24, 3 + 16), at most max_len.
    blockwise = PadCollator(pad_id=PAD, supervise_padding=True, complete_blocks=8)
    assert blockwise(rows).input_ids.shape[1] == 30
    capped = PadCollator(pad_id=PAD, supervise_padding=True, complete_blocks=8, max_len=28)
    assert capped(rows).input_ids.shape[1] == 28
    assert PadCollator(pad_id=PAD, supervise_padding=True, pad_to=40)(rows).input_ids.shape[1] == 40


def test_supervised_padding_loss_is_llada_guidelines_sft_loss(tokenizer):
    """LLaDA's GUIDELINES SFT loss, restated: EOS to the batch's longest record, no attention mask,
    CE / p at the masked positions, each divided by its row's answer length counting the EOS tail,
    summed and divided by the batch size."""
    config = TrainConfig(
        objective="fullseq", supervise_padding=True, loss_weighting="inv_p", loss_normalize="answer_len"
    )
    objective = build_objective(config, MASK)
    batch = build_collator(config, objective, PAD)(features(tokenizer, ((4, 13), (6, 21), (3, 9))))
    step = build_train_step(config, objective)
    noised = step.noise(batch)
    model = ForwardSpy(tiny_llada_model(tokenizer, seed=0))
    with torch.no_grad():
        ours = step.loss(model, batch, noised)
        noisy, ids = noised.noised_ids, batch.input_ids
        logits = model.model(input_ids=noisy).logits
    assert model.masks == [None]
    seq_len = ids.shape[1]
    prompt_mask = torch.arange(seq_len)[None, :] < batch.prompt_lens[:, None]
    answer_lengths = (~prompt_mask).sum(-1, keepdim=True).expand(-1, seq_len)
    masked = noisy == MASK
    p_mask = noised.p[:, None].expand(-1, seq_len)
    token_loss = nn.functional.cross_entropy(logits[masked], ids[masked], reduction="none") / p_mask[masked]
    expected = (token_loss / answer_lengths[masked]).sum() / ids.shape[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    true_end = (batch.prompt_lens + batch.answer_lens)[:, None]
    assert (masked & (torch.arange(seq_len)[None, :] >= true_end)).any()  # the EOS tail is trained


def test_supervised_padding_with_blocks_trains_each_answers_end_followed_by_eos(tokenizer):
    config = TrainConfig(
        objective="blockwise", supervise_padding=True, block_size=8, max_len=40, mask_eps=0.999
    )
    objective = build_objective(config, MASK)
    lengths = ((4, 13), (6, 21), (3, 9))
    records = [
        {"prompt_len": f["prompt_len"], "full_ids": f["full_ids"]} for f in features(tokenizer, lengths)
    ]
    # Blocks of the true answer (13 -> 2, 21 -> 3, 9 -> 2): the schedule exists before any batch.
    assert block_schedule(config, objective, records).num_blocks.tolist() == [2, 3, 2]
    fixed = TrainConfig(**{**vars(config), "pad_to_max_len": True})
    assert block_schedule(fixed, objective, records).num_blocks.tolist() == [5, 5, 5]  # up to 40

    last = [1, 2, 1]
    batch = build_collator(config, objective, PAD)(features(tokenizer, lengths, last))
    noised = build_train_step(config, objective).noise(batch)
    # Each row's last block: its last answer tokens, then EOS up to the block's end, all masked
    # (p ~ U(0.999, 1)) and in the loss; the answer_len span counts the whole block.
    for row, (prompt, answer) in enumerate(lengths):
        start = prompt + 8 * last[row]
        assert noised.loss_mask[row].nonzero().flatten().tolist() == list(range(start, start + 8))
        assert (batch.input_ids[row, prompt + answer : start + 8] == PAD).all()
    spans = objective.span_lens(
        batch.prompt_lens, batch.answer_lens, seq_len=batch.input_ids.shape[1], block_index=last
    )
    assert spans.tolist() == [8, 8, 8]
