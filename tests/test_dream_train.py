"""Training a tiny Dream end to end: both objectives, the loss under the logits shift (by hand and
through every loss path), LoRA presets, merged checkpoints that reload with identical logits."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from train_utils import load_without_blocksft, read_rows, safetensors_dtypes, tiny_config, write_tiny_inputs
from transformers import AutoModelForCausalLM

from blocksft.errors import BlocksftError
from blocksft.families import family_of_model
from blocksft.model import DreamModel
from blocksft.model.loading import load_model
from blocksft.objectives import NoisedBatch
from blocksft.objectives.objective import get_objective
from blocksft.testing_dream import tiny_dream_model, tiny_dream_tokenizer
from blocksft.train.items import TrainBatch
from blocksft.train.lora import apply_lora
from blocksft.train.run import run_train
from blocksft.train.trainer import TrainStep


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dream-train")
    model_dir, data = write_tiny_inputs(folder, family="dream")
    return folder, model_dir, data


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_dream_tokenizer()


def hand_batch(tokenizer):
    """Two right-padded rows; prompts of 3 and 2 tokens, the second row padded with EOS."""
    eos = tokenizer.eos_token_id
    ids = torch.tensor([[20, 21, 22, 30, 31, 32, 33, 34], [25, 26, 40, 41, 42, eos, eos, eos]])
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    return TrainBatch(
        input_ids=ids,
        attention_mask=mask,
        prompt_lens=torch.tensor([3, 2]),
        answer_lens=torch.tensor([5, 3]),
        block_index=torch.tensor([0, 0]),
        sample_ids=torch.tensor([0, 1]),
        item_ids=torch.tensor([0, 1]),
        first_item=0,
        has_padding=True,
    )


@pytest.mark.parametrize(
    "options",
    [dict(sparse_logits=True), dict(sparse_logits=False), dict(sparse_logits=True, ce_chunk_size=2)],
    ids=["sparse", "dense", "ce-chunk"],
)
def test_loss_is_the_shifted_cross_entropy_computed_by_hand(tokenizer, options):
    """Token i is predicted by the raw logits at i - 1: the reference mean of per-row means, by hand."""
    model = tiny_dream_model(tokenizer, seed=3)
    mask_id = model.config.mask_token_id
    objective = get_objective("fullseq", mask_id=mask_id)
    batch = hand_batch(tokenizer)
    loss_mask = torch.zeros(2, 8, dtype=torch.bool)
    loss_mask[0, [3, 5, 7]] = True
    loss_mask[1, [2, 4]] = True
    noised_ids = batch.input_ids.masked_fill(loss_mask, mask_id)
    noised = NoisedBatch(noised_ids, loss_mask, torch.tensor([0.5, 0.5]))
    with torch.no_grad():
        loss = TrainStep(objective, seed=0, **options).loss(model, batch, noised)
        raw = model(noised_ids, attention_mask=batch.attention_mask).logits  # [B, L, V], i predicts i + 1
    per_row = []
    for b in range(2):
        targets = loss_mask[b].nonzero()[:, 0].tolist()
        ces = [-F.log_softmax(raw[b, i - 1], -1)[batch.input_ids[b, i]] for i in targets]
        per_row.append(sum(ces) / len(ces))
    torch.testing.assert_close(loss, sum(per_row) / 2, rtol=1e-5, atol=1e-6)
    unshifted = sum(
        -F.log_softmax(raw[0, i], -1)[batch.input_ids[0, i]] for i in (3, 5, 7)
    )  # what a model without the shift would be scored on
    assert abs(float(unshifted / 3) - float(per_row[0])) > 1e-3


def test_every_loss_path_gives_the_same_loss_and_gradients(tokenizer):
    model = tiny_dream_model(tokenizer, seed=1).train()
    objective = get_objective("blockwise", mask_id=model.config.mask_token_id, block_size=4)
    batch = hand_batch(tokenizer)
    results = []
    for options in (dict(sparse_logits=False), dict(sparse_logits=True), dict(ce_chunk_size=3)):
        model.zero_grad()
        loss, _ = TrainStep(objective, seed=5, **options)(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        for name, grad in grads.items():
            torch.testing.assert_close(grad, results[0][1][name], rtol=1e-4, atol=1e-6)


def test_lora_presets_on_dream(tokenizer):
    family = family_of_model(tiny_dream_model(tokenizer))
    # The paper's four, not the seven that the reference script's Llama names would match on Qwen2.
    assert family.lora_presets["reference"] == ("q_proj", "k_proj", "v_proj", "up_proj")
    seven = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert family.lora_presets["all"] == seven
    _, report = apply_lora(tiny_dream_model(tokenizer), targets="reference", r=4, alpha=8, dropout=0.0)
    assert len(report.modules) == 2 * 4
    assert report.summary().startswith(
        "LoRA on 8 modules: model.layers.{0..1}.{self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,"
        "mlp.up_proj}"
    )
    _, report = apply_lora(tiny_dream_model(tokenizer), targets="all", r=4, alpha=8, dropout=0.0)
    assert len(report.modules) == 2 * 7
    assert "lm_head" not in " ".join(report.modules)
    assert report.summary().startswith(
        "LoRA on 14 modules: model.layers.{0..1}.{self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,"
        "self_attn.o_proj,mlp.gate_proj,mlp.up_proj,mlp.down_proj}"
    )
    _, report = apply_lora(tiny_dream_model(tokenizer), targets="q_proj,down_proj", r=4, alpha=8, dropout=0.0)
    assert len(report.modules) == 4
    with pytest.raises(BlocksftError, match="ff_out match no linear layer.*dream's layers have q_proj"):
        apply_lora(tiny_dream_model(tokenizer), targets="ff_out", r=4, alpha=8, dropout=0.0)


@pytest.mark.parametrize("objective", ["blockwise", "fullseq"])
def test_both_objectives_train_a_tiny_dream_end_to_end(inputs, objective, tmp_path):
    folder, model_dir, data = inputs
    config = tiny_config(folder, model_dir, data, objective, objective=objective, total_steps=6, save_every=6)
    before = load_model(str(model_dir))
    result = run_train(config)
    losses = [float(r["loss"]) for r in read_rows(config.logs_dir / "train_loss.csv")]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    final = result.exports[-1]
    keys = safetensors_dtypes(final)
    assert set(keys) == set(family_of_model(before).parameter_shapes(before.config))  # strict: published keys
    saved = json.loads((final / "config.json").read_text())
    assert saved["model_type"] == "Dream" and saved["architectures"] == ["DreamModel"]
    assert saved["auto_map"]["AutoModel"] == "modeling_dream.DreamModel"

    merged = copy.deepcopy(result.model).merge_and_unload().eval()
    reloaded = load_model(str(final)).eval()  # our class, no remote code
    assert isinstance(reloaded, DreamModel)
    changed = [n for n, p in reloaded.state_dict().items() if not torch.equal(p, before.state_dict()[n])]
    assert changed and all("layers" in n for n in changed)  # LoRA moved the layers, nothing else
    ids = torch.randint(0, len(tiny_dream_tokenizer()), (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(final).eval()(input_ids=ids).logits, expected)
    remote = load_without_blocksft(final, ids, tmp_path)  # the checkpoint's own modeling files
    assert not remote["blocksft_loaded"] and remote["module"].startswith("transformers_modules.")
    assert torch.equal(remote["logits"], expected)
