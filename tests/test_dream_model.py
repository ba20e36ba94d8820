"""Our Dream implementation: checkpoint layout, numerics, GQA, padding, caches, the shift, checkpointing,
Auto classes, and the tiny ChatML tokenizer."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from blocksft.model import DreamConfig, DreamModel
from blocksft.model.modeling_dream import predicting_positions, realign_logits
from blocksft.model.modeling_llada import StaticCacheSpan
from blocksft.special_tokens import TokenNames, mask_token_id
from blocksft.testing_dream import (
    DEFAULT_SYSTEM_PROMPT,
    EOS,
    IM_END,
    IM_START,
    MASK,
    tiny_dream_config,
    tiny_dream_model,
    tiny_dream_tokenizer,
)

# Every key of the published Dream-v0-Instruct-7B config.json, with tiny shapes where it matters.
PUBLISHED_CONFIG = {
    "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    },
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 48,
    "initializer_range": 0.02,
    "intermediate_size": 80,
    "mask_token_id": 3,
    "max_position_embeddings": 131072,
    "max_window_layers": 3,
    "model_type": "Dream",
    "num_attention_heads": 6,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2",
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 64,
}


def published_parameter_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The published (Qwen2) state-dict keys and shapes, stated independently of our modules."""
    d, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes |= {
            layer + "self_attn.q_proj.weight": (d, d),
            layer + "self_attn.q_proj.bias": (d,),
            layer + "self_attn.k_proj.weight": (kv, d),
            layer + "self_attn.k_proj.bias": (kv,),
            layer + "self_attn.v_proj.weight": (kv, d),
            layer + "self_attn.v_proj.bias": (kv,),
            layer + "self_attn.o_proj.weight": (d, d),
            layer + "mlp.gate_proj.weight": (ff, d),
            layer + "mlp.up_proj.weight": (ff, d),
            layer + "mlp.down_proj.weight": (d, ff),
            layer + "input_layernorm.weight": (d,),
            layer + "post_attention_layernorm.weight": (d,),
        }
    return shapes | {"model.norm.weight": (d,), "lm_head.weight": (vocab, d)}


def random_published_tensors(cfg: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=gen) * (0.5 if "norm" in name else 0.1) + ("norm" in name)
        for name, shape in published_parameter_shapes(cfg).items()
    }


def reference_forward(model: DreamModel, ids: torch.Tensor) -> torch.Tensor:
    """A straightforward re-statement of the published numerics, one op at a time (fp32, no mask)."""
    cfg, body = model.config, model.model
    nh, nkv, hs, T = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, ids.shape[1]

    def rms(x, w):  # float32 RMSNorm, cast back before the weight
        return w * F.rms_norm(x.float(), (x.shape[-1],), eps=cfg.rms_norm_eps).to(x.dtype)

    # Rotate-half RoPE is a complex rotation of the pairs (x[j], x[j + hs/2]) by position * freq[j].
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, hs, 2).float() / hs)
    turn = torch.polar(torch.ones(T, hs // 2), torch.outer(torch.arange(T).float(), freqs))  # [T, hs/2]

    def rope(x):  # [B, n, T, hs]
        z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :]) * turn
        return torch.cat([z.real, z.imag], -1)

    def heads(x, n):
        return x.view(*ids.shape, n, hs).transpose(1, 2)

    x = body.embed_tokens.weight[ids]
    for layer in body.layers:
        att = layer.self_attn
        h = rms(x, layer.input_layernorm.weight)
        q, k, v = heads(att.q_proj(h), nh), heads(att.k_proj(h), nkv), heads(att.v_proj(h), nkv)
        q, k = rope(q), rope(k)
        group = [j * nkv // nh for j in range(nh)]  # query head j reads key/value head j // (nh / nkv)
        k, v = k[:, group], v[:, group]
        w = torch.softmax(q @ k.transpose(-1, -2) / hs**0.5, dim=-1)  # no causal mask
        x = x + att.o_proj((w @ v).transpose(1, 2).reshape(*ids.shape, -1))
        h = rms(x, layer.post_attention_layernorm.weight)
        x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
    return model.lm_head(rms(x, body.norm.weight))


@pytest.fixture(scope="module")
def dream_tokenizer():
    return tiny_dream_tokenizer()


@pytest.fixture
def model(dream_tokenizer):
    return tiny_dream_model(dream_tokenizer, seed=0)


def random_ids(model, *shape):
    return torch.randint(4, model.config.vocab_size, shape)


def left_padded(model, lengths):
    """Rows of the given real lengths, left-padded with the pad id; mask and published positions."""
    width = max(lengths)
    rows = [random_ids(model, 1, n)[0] for n in lengths]
    ids = torch.full((len(rows), width), model.config.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    return rows, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


# ----- Checkpoint layout -----


def test_state_dict_keys_and_shapes_are_the_published_ones(model):
    cfg = model.config.to_dict()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == published_parameter_shapes(cfg)
    assert model.get_input_embeddings() is model.model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    assert model.blocks is model.model.layers and len(model.blocks) == 2


def test_published_checkpoint_loads_strictly_without_remote_code(tmp_path):
    tensors = random_published_tensors(PUBLISHED_CONFIG)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    model, info = DreamModel.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16).float()), name
    # The same weights put in by name give the same logits.
    by_name = DreamModel(DreamConfig(**{k: v for k, v in PUBLISHED_CONFIG.items() if k != "auto_map"}))
    by_name.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in tensors.items()}, strict=True)
    ids = torch.randint(4, 64, (2, 11))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, by_name.eval()(ids).logits)
    # The folder has no modeling files: the auto_map must not send transformers to remote code.
    assert type(AutoConfig.from_pretrained(tmp_path)) is DreamConfig
    for auto in (AutoModel, AutoModelForCausalLM):
        assert type(auto.from_pretrained(tmp_path)) is DreamModel


def test_save_pretrained_round_trip_and_auto_classes(tmp_path, model):
    ids = random_ids(model, 2, 9)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "Dream" and saved["num_key_value_heads"] == 2
    assert type(AutoConfig.from_pretrained(tmp_path)) is DreamConfig
    for auto in (AutoModel, AutoModelForCausalLM, DreamModel):
        loaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
        assert type(loaded) is DreamModel and not any(info.values())
        with torch.no_grad():
            assert torch.equal(loaded.eval()(ids).logits, model(ids).logits)


# ----- Numerics -----


def test_forward_matches_the_published_numerics(model):
    ids = random_ids(model, 2, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference_forward(model, ids), rtol=1e-5, atol=1e-5)


def test_bf16_forward_runs_in_bf16_close_to_fp32(dream_tokenizer):
    model = tiny_dream_model(dream_tokenizer).to(torch.bfloat16)
    ids = random_ids(model, 1, 9)
    with torch.no_grad():
        logits = model(ids).logits
        ref = reference_forward(model.float(), ids)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_grouped_kv_heads_equal_the_same_heads_repeated(dream_tokenizer):
    """GQA: query head h reads key/value head h // 2; a full multi-head copy gives the same logits."""
    gqa = tiny_dream_model(dream_tokenizer, seed=2)
    mha = tiny_dream_model(dream_tokenizer, seed=2, num_key_value_heads=4)
    hs, repeat = gqa.config.head_dim, 2
    state = gqa.state_dict()
    for name, tensor in list(state.items()):
        if ".k_proj." in name or ".v_proj." in name:
            per_head = tensor.view(gqa.config.num_key_value_heads, hs, *tensor.shape[1:])
            state[name] = per_head.repeat_interleave(repeat, dim=0).reshape(-1, *tensor.shape[1:])
    mha.load_state_dict(state, strict=True)
    assert gqa.model.layers[0].self_attn.k_proj.weight.shape == (2 * hs, 64)
    ids = random_ids(gqa, 2, 10)
    with torch.no_grad():
        full = gqa(ids, use_cache=True)
        torch.testing.assert_close(full.logits, mha(ids).logits, rtol=1e-5, atol=1e-5)
    # The cache holds the key/value heads only.
    assert [tuple(t.shape) for t in full.kv_cache[0]] == [(2, 2, 10, hs)] * 2


def test_attention_is_bidirectional(model):
    ids = random_ids(model, 1, 10)
    changed = ids.clone()
    changed[0, -1] = 4 + (ids[0, -1] - 4 + 1) % (model.config.vocab_size - 4)
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)  # the first position sees the last token


def test_pad_embedding_row_gets_no_gradient_as_published(model):
    pad = model.config.pad_token_id
    assert model.model.embed_tokens.padding_idx == pad
    ids = torch.tensor([[pad, 5, 6, pad, 7]])
    model.train()(ids).logits.sum().backward()
    grad = model.model.embed_tokens.weight.grad
    assert grad[pad].abs().max() == 0 and grad[5].abs().max() > 0


# ----- Padding -----


@pytest.mark.parametrize("mask_dims", [2, 4])
def test_left_padded_batch_matches_each_row_alone(model, mask_dims):
    rows, ids, mask, positions = left_padded(model, [9, 5, 7])
    if mask_dims == 4:  # the published sampler's form: the outer product of the 2-D mask
        attention_mask = mask.bool()[:, None, None, :] & mask.bool()[:, None, :, None]
    else:
        attention_mask = mask
    with torch.no_grad():
        batched = model(ids, attention_mask=attention_mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            torch.testing.assert_close(batched[i, ids.shape[1] - len(row) :], alone, rtol=1e-5, atol=1e-5)


def test_padding_is_attended_without_a_mask(model):
    _, ids, mask, positions = left_padded(model, [8, 4])
    with torch.no_grad():
        masked = model(ids, attention_mask=mask, position_ids=positions).logits
        unmasked = model(ids, position_ids=positions).logits
    assert not torch.allclose(masked[1, 4:], unmasked[1, 4:], atol=1e-4)


def test_attention_mask_of_another_rank_is_refused(model):
    with pytest.raises(ValueError, match=r"\[B, S\] or \[B, 1, T, S\]"):
        model(random_ids(model, 1, 4), attention_mask=torch.ones(1, 4, 4))


# ----- Caches -----


@pytest.mark.parametrize("span", [(6, 14), (6, 10)], ids=["prefix-cache", "dual-cache"])
def test_kv_cache_span_reproduces_the_full_forward(model, span):
    rows, ids, mask, positions = left_padded(model, [14, 11])
    start, end = span
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=positions, use_cache=True)
        part = model(
            ids[:, start:end],
            attention_mask=mask,
            position_ids=positions[:, start:end],
            kv_cache=full.kv_cache,
            cache_span=span,
            use_cache=True,
        )
    torch.testing.assert_close(part.logits, full.logits[:, start:end], rtol=1e-5, atol=1e-5)
    for (k_part, v_part), (k_full, v_full) in zip(part.kv_cache, full.kv_cache):
        torch.testing.assert_close(k_part, k_full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_part, v_full, rtol=1e-5, atol=1e-5)


def test_static_cache_span_writes_in_place_and_reproduces_the_full_forward(model):
    """Rows recompute different columns; inputs not marked fresh keep the buffers' keys/values."""
    ids = random_ids(model, 2, 12)
    with torch.no_grad():
        full = model(ids, use_cache=True)
        buffers = [(k.clone(), v.clone()) for k, v in full.kv_cache]
        columns = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
        fresh = torch.tensor([[True, True, True, False], [True, True, True, True]])
        fresh_ids = ids.gather(1, columns)
        fresh_ids[0, 3] = 4 + (fresh_ids[0, 3] - 3) % (model.config.vocab_size - 4)  # stale, not fresh
        out = model(
            fresh_ids,
            position_ids=columns,
            kv_cache=buffers,
            cache_span=StaticCacheSpan(columns, fresh),
            use_cache=True,
        )
    assert all(a is b for a, b in zip(out.kv_cache[0], buffers[0]))  # the buffers themselves
    expected = full.logits.gather(1, columns[..., None].expand(-1, -1, full.logits.shape[-1]))
    torch.testing.assert_close(out.logits[fresh], expected[fresh], rtol=1e-5, atol=1e-5)
    for (k_buf, v_buf), (k_full, v_full) in zip(buffers, full.kv_cache):
        torch.testing.assert_close(k_buf, k_full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_buf, v_full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kv_cache=[]), "cache_span=.* is required"),
        (dict(cache_span=(2, 9)), "does not match the input length"),
        (dict(cache_span=StaticCacheSpan(torch.zeros(1, 4), torch.ones(1, 4))), "StaticCacheSpan needs"),
    ],
)
def test_cache_arguments_that_do_not_fit_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model(random_ids(model, 1, 4), **kwargs)


# ----- The shift -----


def test_predicting_positions_moves_targets_one_left():
    targets = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    expected = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(predicting_positions(targets), expected)
    with pytest.raises(ValueError, match="position 0 cannot be a target"):
        predicting_positions(torch.tensor([[1, 0, 1]], dtype=torch.bool))


def test_realign_logits_moves_each_prediction_onto_its_target():
    logits = torch.arange(2 * 4).float().view(2, 4, 1)  # [B, T, V]
    assert realign_logits(logits)[..., 0].tolist() == [[0, 0, 1, 2], [4, 4, 5, 6]]


def test_logits_for_targets_equal_the_realigned_full_logits(model):
    ids = random_ids(model, 3, 10)
    targets = torch.rand(3, 10) < 0.4
    targets[:, 0] = False
    targets[1, -1] = True  # the last position's prediction comes from the one before it
    with torch.no_grad():
        full = model(ids).logits
        some = model(ids, logits_for=targets).logits
        raw = model(ids, logits_at=targets).logits
    assert some.shape == (int(targets.sum()), model.config.vocab_size)
    torch.testing.assert_close(some, realign_logits(full)[targets])
    torch.testing.assert_close(raw, full[targets])  # logits_at stays the published raw logits
    with pytest.raises(ValueError, match="position 0 cannot be a target"):
        model(ids, logits_for=torch.ones(3, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="not both"):
        model(ids, logits_at=targets, logits_for=targets)


def loss_and_gradients(model, ids, targets, sparse):
    """Cross-entropy at ``targets`` through ``logits_for`` (sparse) or the re-aligned full logits."""
    model.train().zero_grad()
    logits = model(ids, logits_for=targets if sparse else None).logits
    loss = F.cross_entropy(logits if sparse else realign_logits(logits)[targets], ids[targets])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_loss_and_gradients(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_loss_through_logits_for_equals_the_loss_on_realigned_logits(model):
    """The training path (head on the targets only) gives the loss and gradients of the full head."""
    ids = random_ids(model, 2, 9)
    targets = torch.rand(2, 9) < 0.5
    targets[:, 0], targets[0, 3] = False, True
    assert_same_loss_and_gradients(
        loss_and_gradients(model, ids, targets, sparse=False),
        loss_and_gradients(model, ids, targets, sparse=True),
    )


# ----- Training -----


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(dream_tokenizer):
    ids = torch.randint(4, 100, (2, 12))
    targets = torch.ones(2, 12, dtype=torch.bool)
    targets[:, 0] = False
    plain = tiny_dream_model(dream_tokenizer, seed=3)
    checkpointed = tiny_dream_model(dream_tokenizer, seed=3)
    checkpointed.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in checkpointed.blocks)
    assert not any(layer.gradient_checkpointing for layer in plain.blocks)
    calls = []
    checkpointed.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    assert_same_loss_and_gradients(
        loss_and_gradients(plain, ids, targets, sparse=True),
        loss_and_gradients(checkpointed, ids, targets, sparse=True),
    )
    assert len(calls) == 2  # the layer ran again in the backward pass


def test_hidden_states_only_and_unknown_arguments(model):
    ids = random_ids(model, 1, 5)
    out = model(ids, output_hidden_states=True, return_logits=False)
    assert out.logits is None and out.hidden_states.shape == (1, 5, 64)
    with pytest.raises(TypeError, match="labels"):
        model(ids, labels=ids)


# ----- Config -----


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_act="gelu"), "hidden_act='gelu'"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings=True"),
        (dict(use_sliding_window=True), "use_sliding_window=True"),
        (dict(attention_dropout=0.1), "attention_dropout=0.1"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling="),
        (dict(hidden_size=30, num_attention_heads=4), "not divisible by num_attention_heads"),
        (dict(num_key_value_heads=3), "not divisible by num_key_value_heads"),
        (dict(mask_token_id=10_000), "mask_token_id=10000 is outside the vocabulary"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}), "rope_theta=10000.0 != "),
    ],
)
def test_config_refuses_what_this_implementation_cannot_honour(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_dream_config(**overrides)


def test_config_defaults_are_dream_7b():
    config = DreamConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (3584, 28, 18944)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (28, 4, 128)
    assert (config.vocab_size, config.rope_theta, config.rms_norm_eps) == (152064, 1e6, 1e-6)
    assert (config.mask_token_id, config.pad_token_id, config.eos_token_id) == (151666, 151643, 151643)
    assert config.tie_word_embeddings is False


# ----- Tokenizer -----


def test_tiny_tokenizer_has_dreams_special_tokens(dream_tokenizer):
    tok = dream_tokenizer
    assert tok.convert_tokens_to_ids([EOS, IM_START, IM_END, MASK]) == [0, 1, 2, 3]
    assert tok.eos_token_id == tok.pad_token_id == 0 and tok.mask_token == MASK
    assert mask_token_id(tok, TokenNames(mask="<|mask|>", end_of_turn="<|im_end|>")) == 3
    assert tok("12 apples").input_ids[:2] == tok.convert_tokens_to_ids(["1", "2"])  # no BOS, digits split
    config = tiny_dream_config(tok)
    assert (config.vocab_size, config.mask_token_id, config.pad_token_id) == (len(tok), 3, 0)


def test_tiny_tokenizer_renders_chatml_as_dream_does(dream_tokenizer):
    user = [{"role": "user", "content": "What is 2+3?"}]
    chat = [*user, {"role": "assistant", "content": "5"}]
    render = dream_tokenizer.apply_chat_template
    system = f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
    question = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    assert render(user, tokenize=False, add_generation_prompt=True) == (
        system + question + "<|im_start|>assistant\n"
    )
    assert render(user, tokenize=False, add_generation_prompt=False) == system + question
    assert render(chat, tokenize=False) == system + question + "<|im_start|>assistant\n5<|im_end|>\n"
    own_system = [{"role": "system", "content": "Be brief."}, *user]
    assert render(own_system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + question + "<|im_start|>assistant\n"
    )
    ids = dream_tokenizer(render(chat, tokenize=False)).input_ids
    assert ids.count(1) == 3 and ids.count(2) == 3  # each turn's markers are single special tokens
