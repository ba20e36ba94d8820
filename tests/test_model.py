"""Our LLaDA implementation: checkpoint layout, numerics, padding, caches, checkpointing, Auto classes."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from blocksft.errors import BlocksftError
from blocksft.model import LLaDAConfig, LLaDAModelLM
from blocksft.model.layout import expected_parameter_shapes, verify_checkpoint
from blocksft.model.loading import load_model
from blocksft.reference import published_forward
from blocksft.testing import tiny_llada_config, tiny_llada_model
from blocksft.tokenizer import load_tokenizer

# Every key of the published LLaDA-8B-Instruct config.json, with tiny shapes where it matters.
PUBLISHED_CONFIG = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModel": "modeling_llada.LLaDAModelLM",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    },
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 32,
    "embedding_dropout": 0.0,
    "embedding_size": 64,
    "eos_token_id": 61,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 60,
    "max_sequence_length": 4096,
    "mlp_hidden_size": 96,
    "mlp_ratio": 4,
    "model_type": "llada",
    "multi_query_attention": None,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 3,
    "pad_token_id": 61,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": False,
    "vocab_size": 64,
    "weight_tying": False,
}


def published_key_names(n_layers):
    names = ["model.transformer.wte.weight"]
    for i in range(n_layers):
        for part in (
            "attn_norm",
            "q_proj",
            "k_proj",
            "v_proj",
            "attn_out",
            "ff_norm",
            "ff_proj",
            "up_proj",
            "ff_out",
        ):
            names.append(f"model.transformer.blocks.{i}.{part}.weight")
    return names + ["model.transformer.ln_f.weight", "model.transformer.ff_out.weight"]


def test_state_dict_keys_are_the_published_ones(tiny_model):
    keys = list(tiny_model.state_dict())
    assert keys == published_key_names(tiny_model.config.n_layers)
    shapes = {k: tuple(v.shape) for k, v in tiny_model.state_dict().items()}
    assert shapes == expected_parameter_shapes(tiny_model.config)


def test_published_layout_loads_strictly(tmp_path):
    config = LLaDAConfig(
        **{k: v for k, v in PUBLISHED_CONFIG.items() if k not in ("architectures", "auto_map")}
    )
    gen = torch.Generator().manual_seed(1)
    tensors = {
        name: torch.randn(shape, generator=gen) for name, shape in expected_parameter_shapes(config).items()
    }
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    verify_checkpoint(tmp_path)
    model, info = LLaDAModelLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    for name, tensor in tensors.items():
        torch.testing.assert_close(state[name].float(), tensor.to(torch.bfloat16).float(), rtol=0, atol=0)
    # load_model (our class by default) reads the published config, auto_map and all.
    assert type(load_model(str(tmp_path))) is LLaDAModelLM


def test_verify_checkpoint_reports_missing_and_misshaped(tmp_path, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    del state["model.transformer.blocks.1.up_proj.weight"]
    state["model.transformer.ln_f.weight"] = torch.ones(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    tiny_model.config.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"missing 1: model.transformer.blocks.1.up_proj.weight.*wrong shape"
    ):
        verify_checkpoint(tmp_path)


def test_loading_a_folder_that_misses_a_tensor_is_refused_not_filled_at_random(tmp_path, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    tiny_model.config.save_pretrained(tmp_path)
    with pytest.raises(
        BlocksftError, match=r"does not match the LLaDA layout: missing 1: .*blocks.1.up_proj"
    ):
        load_model(str(tmp_path))


def test_forward_matches_published_numerics(tiny_model):
    ids = torch.randint(6, tiny_model.config.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_model(ids).logits, published_forward(tiny_model, ids), rtol=1e-5, atol=1e-5
        )


def test_bf16_forward_runs_in_bf16(tokenizer):
    model = tiny_llada_model(tokenizer).to(torch.bfloat16)
    ids = torch.randint(6, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        logits = model(ids).logits
        ref = published_forward(model.float(), ids)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_right_padding_with_mask_does_not_change_real_logits(tiny_model):
    real = torch.randint(6, tiny_model.config.vocab_size, (1, 7))
    padded = torch.cat([real, torch.full((1, 5), tiny_model.config.pad_token_id)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    with torch.no_grad():
        alone = tiny_model(real).logits
        batched = tiny_model(padded, attention_mask=mask).logits
        unmasked = tiny_model(padded).logits
    torch.testing.assert_close(batched[:, :7], alone, rtol=1e-5, atol=1e-5)
    # Without a mask the padding is attended, as in the published code: the logits differ.
    assert not torch.allclose(unmasked[:, :7], alone, atol=1e-4)


def test_left_padding_with_mask_and_positions_matches_alone(tiny_model):
    real = torch.randint(6, tiny_model.config.vocab_size, (1, 6))
    padded = torch.cat([torch.full((1, 3), tiny_model.config.pad_token_id), real], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = tiny_model(real).logits
        batched = tiny_model(padded, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(batched[:, 3:], alone, rtol=1e-5, atol=1e-5)


def test_attention_is_bidirectional(tiny_model):
    ids = torch.randint(6, tiny_model.config.vocab_size, (1, 10))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1 - 6) % (tiny_model.config.vocab_size - 6) + 6
    with torch.no_grad():
        a, b = tiny_model(ids).logits, tiny_model(changed).logits
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)  # the first position sees the last token


def test_logits_at_selected_positions_equal_full_logits(tiny_model):
    ids = torch.randint(6, tiny_model.config.vocab_size, (3, 8))
    where = torch.rand(3, 8) < 0.3
    with torch.no_grad():
        full = tiny_model(ids).logits
        some = tiny_model(ids, logits_at=where).logits
    assert some.shape == (int(where.sum()), tiny_model.config.vocab_size)
    torch.testing.assert_close(some, full[where])


@pytest.mark.parametrize("span", [(6, 14), (6, 10)], ids=["prefix-cache", "dual-cache"])
def test_kv_cache_span_reproduces_full_forward(tiny_model, span):
    ids = torch.randint(6, tiny_model.config.vocab_size, (2, 14))
    start, end = span
    with torch.no_grad():
        full = tiny_model(ids, use_cache=True)
        part = tiny_model(ids[:, start:end], kv_cache=full.kv_cache, cache_span=span, use_cache=True)
    torch.testing.assert_close(part.logits, full.logits[:, start:end], rtol=1e-5, atol=1e-5)
    assert part.kv_cache[0][0].shape == full.kv_cache[0][0].shape


def test_gradient_checkpointing_gives_same_loss_and_grads(tokenizer):
    ids = torch.randint(6, 100, (2, 12))

    def loss_and_grads(checkpointing):
        model = tiny_llada_model(tokenizer, seed=3).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = F.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_a, grads_a = loss_and_grads(False)
    loss_b, grads_b = loss_and_grads(True)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_save_and_auto_class_round_trip(tmp_path, tiny_model):
    ids = torch.randint(6, tiny_model.config.vocab_size, (2, 9))
    tiny_model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is LLaDAConfig
    for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModel):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is LLaDAModelLM
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)


@pytest.mark.parametrize(
    "key, value",
    [
        ("alibi", True),
        ("weight_tying", True),
        ("block_type", "sequential"),
        ("scale_logits", True),
        ("rope", False),
    ],
)
def test_config_rejects_settings_it_cannot_honour(key, value):
    with pytest.raises(ValueError, match=key):
        tiny_llada_config(**{key: value})


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_heads"):
        tiny_llada_config(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="mask_token_id"):
        tiny_llada_config(mask_token_id=10_000)


def test_load_model_refuses_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not 'llada'"):
        load_model(str(tmp_path))


def test_forward_rejects_unknown_arguments(tiny_model):
    with pytest.raises(TypeError, match="labels"):
        tiny_model(torch.zeros(1, 3, dtype=torch.long), labels=torch.zeros(1, 3))


def test_load_errors_are_one_clear_line(tmp_path):
    with pytest.raises(BlocksftError, match="no such checkpoint folder"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(BlocksftError, match="no such checkpoint folder"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BlocksftError, match="cannot load the model"):
        load_model(str(tmp_path))
