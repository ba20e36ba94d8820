"""Semi-autoregressive decoding with a tiny Dream (shifted logits): the shift by hand, the prompt
never written, left padding, caches and the fixed-shape decoders equal the loop where they must,
empty prompts refused, and `blocksft generate` on a Dream checkpoint folder."""

import pytest
import torch

from blocksft.cli import main
from blocksft.errors import BlocksftError
from blocksft.generation.sampler import generate
from blocksft.generation.text import decode_answer, encode_prompt
from blocksft.generation.transfer import left_pad
from blocksft.special_tokens import stop_token_ids
from blocksft.testing_dream import DREAM, tiny_dream_model, tiny_dream_tokenizer

PROMPTS = ["Natalia sold clips", "How many?", "Weng earns $12 an hour for babysitting."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_dream_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    # A wide init, as the LLaDA sampler tests: confident, distinct predictions (rows finish blocks
    # at different steps under a threshold).
    return tiny_dream_model(tokenizer, seed=0, initializer_range=0.4)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def run(model, ids, **kwargs):
    kwargs = {
        "gen_length": 16,
        "block_length": 8,
        "steps": 16,
        "mask_id": model.config.mask_token_id,
        **kwargs,
    }
    ids = torch.tensor([ids]) if isinstance(ids[0], int) else ids
    return generate(model, ids, **kwargs)


def test_each_token_is_predicted_from_the_position_before_it(model, prompts):
    """One token per step, one block: step k commits the most confident masked position, whose
    prediction is the raw logits one position earlier, recomputed here by hand."""
    prompt = torch.tensor([prompts[0]])
    out = run(model, prompt, gen_length=4, block_length=4, steps=4)
    canvas = torch.cat([prompt, torch.full((1, 4), model.config.mask_token_id)], 1)
    p = prompt.shape[1]
    for step in range(4):
        with torch.no_grad():
            raw = model(canvas).logits[0]  # [L, V], i predicts i + 1
        probs = raw[p - 1 : p + 3].double().softmax(-1)  # predictions of positions p .. p + 3
        conf, tokens = probs.max(-1)
        conf[canvas[0, p:] != model.config.mask_token_id] = -1
        pick = int(conf.argmax())
        canvas[0, p + pick] = tokens[pick]
        assert int(out.commit_step[0, pick]) == step
    assert torch.equal(out.sequences, canvas)


def test_the_prompt_is_never_written_and_empty_prompts_are_refused(model, prompts):
    one = torch.tensor([prompts[1][:1]])  # a one-token prompt: only position 0
    out = run(model, one)
    assert torch.equal(out.sequences[:, :1], one)
    with pytest.raises(BlocksftError, match="empty prompt.*at least one prompt token"):
        run(model, torch.zeros(1, 0, dtype=torch.long))
    ids, mask = left_pad([prompts[0], prompts[1]], pad_id=0)
    mask[1] = 0  # the second row all padding: an empty prompt in a batch
    with pytest.raises(BlocksftError, match=r"empty prompt \(row 1\)"):
        run(model, ids, attention_mask=mask)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(cache="prefix"), dict(cache="dual"), dict(threshold=0.5), dict(cfg_scale=1.0)],
    ids=["plain", "prefix", "dual", "threshold", "cfg"],
)
def test_left_padded_batch_equals_one_by_one(model, prompts, options, tokenizer):
    settings = dict(gen_length=16, block_length=8, steps=8, **options)
    ids, mask = left_pad(prompts, pad_id=tokenizer.pad_token_id)
    batch = run(model, ids, attention_mask=mask, **settings)
    assert torch.equal(batch.sequences[:, : ids.shape[1]], ids)
    for row, prompt in enumerate(prompts):
        alone = run(model, prompt, **settings)
        assert torch.equal(batch.generated[row], alone.generated[0]), row


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_equals_plain_when_every_step_is_a_full_forward(model, prompts, cache):
    one = dict(gen_length=32, block_length=8, steps=4)
    assert torch.equal(
        run(model, prompts[0], cache=cache, **one).sequences, run(model, prompts[0], **one).sequences
    )
    many = dict(gen_length=32, block_length=8, steps=16)
    refreshed = run(model, prompts[0], cache=cache, cache_refresh=1, **many)
    assert torch.equal(refreshed.sequences, run(model, prompts[0], **many).sequences)


def test_cache_steps_recompute_from_one_column_before_the_block(model, prompts):
    total = len(prompts[0]) + 32
    settings = dict(gen_length=32, block_length=8, steps=16)  # 4 blocks of 4 steps: 1 full + 3 cached
    dual = run(model, prompts[0], cache="dual", **settings)
    assert dual.forward_tokens == 4 * total + 4 * 3 * (8 + 1)
    prefix = run(model, prompts[0], cache="prefix", **settings)
    assert prefix.forward_tokens == 4 * total + 3 * sum(32 - 8 * b + 1 for b in range(4))
    plain = run(model, prompts[0], **settings)
    assert not all(torch.equal(r.sequences, plain.sequences) for r in (dual, prefix))  # an approximation


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(cache="prefix"),
        dict(cache="dual"),
        dict(threshold=0.5),
        dict(cache="dual", threshold=0.5),
    ],
    ids=["plain", "prefix", "dual", "threshold", "dual-threshold"],
)
def test_fixed_shape_decoders_equal_the_loop_row_by_row(model, prompts, options, tokenizer):
    settings = dict(gen_length=32, block_length=8, steps=32, **options)
    ids, mask = left_pad(prompts, pad_id=tokenizer.pad_token_id)
    batch = run(model, ids, attention_mask=mask, decode="static", **settings)
    for row, prompt in enumerate(prompts):
        alone = run(model, prompt, **settings)
        assert torch.equal(batch.generated[row], alone.generated[0]), row
        assert torch.equal(batch.commit_step[row], alone.commit_step[0]), row
    if options.get("cache") is not None:  # the rows share each block's refill, as in the loop
        assert batch.nfe == run(model, ids, attention_mask=mask, **settings).nfe


def test_stop_tokens_are_eos_and_im_end(tokenizer):
    assert stop_token_ids(tokenizer, DREAM.tokens) == (
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-dream")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_generates_with_the_chatml_prompt(checkpoint, model, tokenizer, capsys):
    flags = ["--gen-length", "16", "--block-length", "8", "--steps", "8", "--device", "cpu"]
    assert main(["generate", "--model", str(checkpoint), "--prompt", PROMPTS[0], "--chat", *flags]) == 0
    printed = capsys.readouterr().out
    ids = encode_prompt(tokenizer, PROMPTS[0], chat=True)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    out = run(model, torch.tensor([ids]), gen_length=16, block_length=8, steps=8)
    stops = stop_token_ids(tokenizer, DREAM.tokens)
    assert printed == decode_answer(tokenizer, out.sequences, out.prompt_length, stops)[0] + "\n"
    assert main(["generate", "--model", str(checkpoint), "--prompt", "a <|mask|> b", *flags]) == 2
    assert "the mask token" in capsys.readouterr().err
