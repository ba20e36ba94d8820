"""The pieces of a training run, without the Trainer: LoRA targets, the merge, the training step,
the item plan, padding, recipes and the launcher entry point."""

import argparse
import copy
import dataclasses
import json
import re

import pytest
import torch

from blocksft.cli import main
from blocksft.commands.train import add_arguments, build_train_config
from blocksft.config.train import TrainConfig, available_recipes, resolve_recipe
from blocksft.errors import BlocksftError
from blocksft.model import LLaDAModelLM
from blocksft.objectives import get_objective
from blocksft.rng import batch_seed
from blocksft.testing import tiny_llada_model
from blocksft.train.block_schedule import BlockSchedule
from blocksft.train.engine import resolve_deepspeed_config
from blocksft.train.export import export_dir, lora_scalings, merge_lora_state_dict
from blocksft.train.items import PadCollator, plan_items, steps_for
from blocksft.train.lora import apply_lora
from blocksft.train.trainer import KeyedCollator, TrainStep


def lora_model(tokenizer, targets, r=4):
    return apply_lora(tiny_llada_model(tokenizer, seed=0), targets=targets, r=r, alpha=2 * r, dropout=0.0)


def layer_names(modules):
    return {m.rsplit(".", 1)[1] for m in modules}


def test_reference_targets_adapt_exactly_q_k_v_up(tokenizer):
    model, report = lora_model(tokenizer, "reference")
    assert layer_names(report.modules) == {"q_proj", "k_proj", "v_proj", "up_proj"}
    assert len(report.modules) == 4 * 2
    lora_params = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora_params and all("lora_" in n for n in lora_params)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_all_targets_adapt_every_block_linear_layer_but_never_the_head(tokenizer):
    model, report = lora_model(tokenizer, "all")
    assert layer_names(report.modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "attn_out",
        "ff_proj",
        "up_proj",
        "ff_out",
    }
    assert len(report.modules) == 7 * 2
    assert all(re.fullmatch(r"model\.transformer\.blocks\.\d+\.\w+", m) for m in report.modules)
    head = model.get_base_model().model.transformer.ff_out
    assert type(head) is torch.nn.Linear and not head.weight.requires_grad
    assert (
        "LoRA on 14 modules: model.transformer.blocks.{0..1}.{q_proj,k_proj,v_proj,attn_out,"
        in report.summary()
    )


def test_a_comma_list_and_names_that_match_nothing(tokenizer):
    _, report = lora_model(tokenizer, "attn_out, ff_out")
    assert layer_names(report.modules) == {"attn_out", "ff_out"}
    with pytest.raises(BlocksftError, match="o_proj, gate_proj match no linear layer"):
        lora_model(tokenizer, "q_proj,o_proj,gate_proj")
    with pytest.raises(BlocksftError, match="empty"):
        lora_model(tokenizer, " , ")


def test_merging_a_state_dict_equals_the_unmerged_model(tokenizer):
    model, _ = lora_model(tokenizer, "all")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)  # B starts at zero: make the adapters matter
    merged_state = merge_lora_state_dict(model.state_dict(), lora_scalings(model))
    assert not any("lora_" in k or "base_layer" in k for k in merged_state)
    plain = LLaDAModelLM(model.get_base_model().config).eval()
    plain.load_state_dict(merged_state)  # strict: exactly the published key names
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = model.eval()(input_ids=ids).logits
        peft_merged = copy.deepcopy(model).merge_and_unload()(input_ids=ids).logits
        ours = plain(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    torch.testing.assert_close(ours, peft_merged, rtol=0, atol=0)
    torch.testing.assert_close(ours, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-3)  # the adapters did change the model


def test_export_names_never_overwrite(tmp_path):
    root = tmp_path / "ckpts"
    assert export_dir(root, 7).name == "ckpts_step0007"
    (tmp_path / "ckpts_step0007").mkdir()
    assert export_dir(root, 7).name == "ckpts_step0007-v2"
    (tmp_path / "ckpts_step0007-v2").mkdir()
    assert export_dir(root, 7).name == "ckpts_step0007-v3"
    assert export_dir(root, 12345).name == "ckpts_step12345"


def make_batch(tokenizer, lengths=((4, 13), (6, 21), (3, 9)), multiple_of=8, pad_to=None):
    generator = torch.Generator().manual_seed(3)
    features = [
        {
            "full_ids": torch.randint(6, len(tokenizer), (prompt + answer,), generator=generator),
            "prompt_len": prompt,
            "block": k % 2,
            "sample": k,
            "item": 10 + k,
        }
        for k, (prompt, answer) in enumerate(lengths)
    ]
    return PadCollator(pad_id=1, multiple_of=multiple_of, pad_to=pad_to)(features)


def test_collator_pads_to_the_longest_record_rounded_to_a_multiple(tokenizer):
    batch = make_batch(tokenizer)
    assert batch.input_ids.shape == (3, 32)  # longest 27 -> 32
    assert batch.attention_mask.sum(1).tolist() == [17, 27, 12]
    assert batch.prompt_lens.tolist() == [4, 6, 3] and batch.answer_lens.tolist() == [13, 21, 9]
    assert (batch.input_ids[0, 17:] == 1).all() and batch.first_item == 10
    assert make_batch(tokenizer, pad_to=64).input_ids.shape == (3, 64)


@pytest.mark.parametrize("objective", ["blockwise", "fullseq"])
def test_sparse_logits_give_the_loss_and_gradients_of_full_logits(tokenizer, objective):
    batch = make_batch(tokenizer)
    model, _ = lora_model(tokenizer, "all")
    target = get_objective(objective, mask_id=2, block_size=8)
    results = []
    for sparse in (True, False):
        model.zero_grad()
        loss, loss_mask = TrainStep(target, seed=5, sparse_logits=sparse)(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.detach(), loss_mask, grads))
    (sparse_loss, sparse_mask, sparse_grads), (full_loss, full_mask, full_grads) = results
    assert torch.equal(sparse_mask, full_mask) and sparse_mask.any()
    torch.testing.assert_close(sparse_loss, full_loss)
    for a, b in zip(sparse_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_padding_is_invisible_with_the_attention_mask(tokenizer):
    """Padding a batch to 64 instead of 32 changes nothing when padding is masked (the default), and
    changes the logits when it is attended (the reference's setting)."""
    model = tiny_llada_model(tokenizer, seed=0)
    short, long = make_batch(tokenizer), make_batch(tokenizer, pad_to=64)
    with torch.no_grad():
        out_short = model(input_ids=short.input_ids, attention_mask=short.attention_mask).logits
        out_long = model(input_ids=long.input_ids, attention_mask=long.attention_mask).logits
        attended = model(input_ids=long.input_ids).logits
    real = short.attention_mask.bool()
    torch.testing.assert_close(out_long[:, :32][real], out_short[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(attended[:, :32][real], out_short[real], atol=1e-3)


def test_noise_is_seeded_by_the_batch_so_a_replay_is_identical(tokenizer):
    model = tiny_llada_model(tokenizer, seed=0)
    step = TrainStep(get_objective("blockwise", mask_id=2, block_size=8), seed=42)
    batch = make_batch(tokenizer)
    with torch.no_grad():
        first, mask = step(model, batch)
        again, mask_again = step(model, batch)
        other, mask_other = step(model, dataclasses.replace(batch, first_item=99))
    assert torch.equal(mask, mask_again) and first == again
    assert not torch.equal(mask, mask_other)
    assert len({batch_seed(42, k) for k in range(1000)} | {batch_seed(43, k) for k in range(1000)}) == 2000


def plan(num_blocks, epochs, blockwise=True, drop_exhausted=False):
    schedule = BlockSchedule(num_blocks, seed=1, drop_exhausted=drop_exhausted)
    return plan_items(schedule, epochs, blockwise=blockwise)


def test_the_plan_uses_every_sample_block_pair_once_then_stops():
    num_blocks = [1, 3, 2, 1]
    items = plan(num_blocks, epochs=10)
    assert {i.epoch for i in items} == {0, 1, 2}  # 3 epochs cover every pair: the rest is not planned
    live = [(i.sample, i.block) for i in items if i.block >= 0]
    assert sorted(live) == [(s, b) for s, n in enumerate(num_blocks) for b in range(n)]
    assert sorted(i.sample for i in items if i.epoch == 1) == [0, 1, 2, 3]  # exhausted ones stay, block -1
    # the run ends at the step holding the last live item (the reference's early stop)
    last_live = max(k for k, i in enumerate(items) if i.block >= 0)
    assert steps_for(items, 2, None) == last_live // 2 + 1
    assert steps_for(items, 2, 1) == 1
    dropped = plan(num_blocks, epochs=10, drop_exhausted=True)
    assert len(dropped) == sum(num_blocks) and all(i.block >= 0 for i in dropped)


def test_fullseq_plans_every_sample_every_epoch_in_a_seeded_order():
    items = plan([1] * 6, epochs=2, blockwise=False)
    assert len(items) == 12 and all(i.block == 0 for i in items)
    assert sorted(i.sample for i in items[:6]) == list(range(6)) == sorted(i.sample for i in items[6:])
    assert [i.sample for i in items[:6]] != [i.sample for i in items[6:]]  # reshuffled per epoch


def test_steps_are_the_same_samples_whatever_the_world_size():
    items = plan([2] * 6400, epochs=1)
    assert steps_for(items, 32, None) == 200  # one GPU: the reference's 200 steps
    assert steps_for(items, 8 * 32, None) == 25  # eight GPUs: the same 6,400 samples in 25 steps
    with pytest.raises(BlocksftError, match="cannot fill one optimizer step"):
        steps_for(items[:10], 32, None)


def parse_train(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_train_config(parser.parse_args(argv))


def test_shipped_recipes_resolve_by_name_and_by_path(tmp_path):
    assert {"paper_blockwise", "paper_fullseq"} <= set(available_recipes())
    blockwise = parse_train(["--config", "paper_blockwise"])
    assert (blockwise.objective, blockwise.max_samples, blockwise.block_size) == ("blockwise", 6400, 32)
    assert (blockwise.micro_batch, blockwise.lr, blockwise.lora_r, blockwise.lora_alpha) == (
        32,
        1e-5,
        256,
        512,
    )
    assert blockwise.ckpt_dir == "ckpts_stagewise_sft_32" and blockwise.lora_targets == "reference"
    fullseq = parse_train(["--config", "paper_fullseq", "--micro-batch", "16"])
    assert (fullseq.objective, fullseq.max_samples, fullseq.micro_batch) == ("fullseq", 9600, 16)
    assert fullseq.ckpt_dir == "ckpts_fullseq_sft" and fullseq.suffix_mask_prob is None
    assert resolve_recipe(str(resolve_recipe("paper_fullseq"))) == resolve_recipe("paper_fullseq.yaml")
    with pytest.raises(BlocksftError, match="shipped: .*paper_blockwise"):
        resolve_recipe("paper_nothing")


def test_defaults_follow_the_reference_and_bad_values_are_refused():
    config = TrainConfig()
    assert (config.lr, config.adam_beta2, config.warmup_ratio, config.min_lr_ratio, config.seed) == (
        1e-5,
        0.95,
        0.1,
        0.01,
        42,
    )
    assert (config.max_samples, config.max_len, config.lora_dropout) == (6400, 256, 0.05)
    assert TrainConfig(objective="fullseq").max_samples == 9600
    assert TrainConfig(block_size=64).ckpt_dir == "ckpts_stagewise_sft_64"
    assert TrainConfig(deepspeed="none").deepspeed is None
    with pytest.raises(ValueError, match="micro_batch must be positive"):
        TrainConfig(micro_batch=0)
    with pytest.raises(ValueError, match="prefix_mask_rate"):
        TrainConfig(prefix_mask_rate=1.5)


def test_deepspeed_configs_resolve_by_name():
    assert resolve_deepspeed_config("auto", cuda_available=False) is None
    for stage in (2, 3):
        path = resolve_deepspeed_config(f"zero{stage}", cuda_available=False)
        assert json.loads(open(path).read())["zero_optimization"]["stage"] == stage
    with pytest.raises(BlocksftError, match="no such file"):
        resolve_deepspeed_config("zero9.json", cuda_available=True)


def test_the_module_entry_point_accepts_the_launchers_local_rank():
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--local_rank=0", "--help"])
    assert exit_info.value.code == 0


def test_a_batch_moves_as_one_value_with_its_host_fields(tokenizer):
    batch = make_batch(tokenizer)
    moved = batch.to("cpu")
    assert isinstance(moved, type(batch)) and (moved.first_item, moved.has_padding) == (10, True)
    for name in ("input_ids", "attention_mask", "prompt_lens", "answer_lens", "block_index", "sample_ids"):
        assert torch.equal(getattr(moved, name), getattr(batch, name))
    # The Trainer handles mappings: it gets the batch as one value and hands it back to the step.
    feature = {"full_ids": [5, 6], "prompt_len": 1, "block": 0, "sample": 0, "item": 0}
    keyed = KeyedCollator(PadCollator(pad_id=1))([feature])
    assert list(keyed) == ["batch"] and keyed["batch"].input_ids.tolist() == [[5, 6, 1, 1, 1, 1, 1, 1]]
