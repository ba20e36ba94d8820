"""The fixed-shape decoding steps (``decode="static"|"graph"|"compiled"``): every row of a batch
decodes exactly as the loop sampler decodes it alone, for every cache mode, with threshold decoding
and the EOS options; the steps compile whole (no graph break, so no host sync or data-dependent
shape); the cache buffers are written where they should be; bad settings are one clear error."""

import pytest
import test_generate
import torch
from test_generate import EOS, EOT, MASK

from blocksft.cli import main
from blocksft.config.sampler import SamplerConfig
from blocksft.errors import BlocksftError
from blocksft.generation.sampler import generate
from blocksft.generation.static import DecoderCache, StaticDecoder
from blocksft.generation.transfer import descending_rank, left_pad
from blocksft.model.modeling_shared import StaticCacheSpan

pytestmark = pytest.mark.usefixtures("one_thread")

# test_generate's fixtures: the tiny model with a wide init (rows finish their blocks at different
# steps under a 0.5 threshold), its EOS-prone copy and three prompts.
model, eos_model, prompts = (
    test_generate.model,
    test_generate.eos_model,
    test_generate.prompts,
)


def decode(model, ids, **kwargs):
    settings = {"gen_length": 32, "block_length": 8, "steps": 32, "mask_id": MASK, **kwargs}
    ids = torch.tensor([ids]) if isinstance(ids[0], int) else ids
    return generate(model, ids, **settings)


def assert_rows_decode_as_alone(model, prompts, **settings):
    """The batch through the fixed-shape steps against each prompt alone through the loop."""
    ids, mask = left_pad(prompts, pad_id=EOS)
    batch = decode(model, ids, attention_mask=mask, decode="static", **settings)
    alone = [decode(model, prompt, **settings) for prompt in prompts]
    for row, single in enumerate(alone):
        assert torch.equal(batch.generated[row], single.generated[0]), row
        assert torch.equal(batch.commit_step[row], single.commit_step[0]), row
        assert int(batch.num_tokens[row]) == int(single.num_tokens[0])
        assert int(batch.row_nfe[row]) == single.nfe
    if settings.get("cache") is None:
        assert batch.nfe == max(single.nfe for single in alone)  # nobody waits for a slower row
    else:  # with a cache the rows share each block's refill: they wait for each other, as in the loop
        looped = decode(model, ids, attention_mask=mask, **settings)
        assert batch.nfe == looped.nfe
    return batch, alone


@pytest.mark.parametrize("threshold", [None, 0.5], ids=["schedule", "threshold"])
@pytest.mark.parametrize("cache", [None, "prefix", "dual"], ids=["plain", "prefix", "dual"])
def test_every_row_of_a_static_batch_decodes_as_the_loop_decodes_it_alone(model, prompts, cache, threshold):
    batch, alone = assert_rows_decode_as_alone(model, prompts, cache=cache, threshold=threshold)
    if threshold is not None and cache is None:
        # The rows finish their blocks at different steps: the loop's batch waits for the slowest
        # row in every block, the static batch only for the slowest row overall.
        ids, mask = left_pad(prompts, pad_id=EOS)
        looped = decode(model, ids, attention_mask=mask, cache=cache, threshold=threshold)
        assert len({single.nfe for single in alone}) > 1
        assert batch.nfe < looped.nfe


@pytest.mark.parametrize(
    "options",
    [
        dict(stop_at_eos=True),
        dict(stop_at_eos=True, threshold=0.5, cache="dual"),
        dict(min_new_tokens=10),
        dict(defer_eos=True, cache="prefix"),
        dict(cache="prefix", cache_refresh=2, threshold=0.5),
        dict(cache="dual", cache_refresh=3),
    ],
    ids=["stop", "stop-dual-threshold", "min-new", "defer-prefix", "prefix-refresh", "dual-refresh"],
)
def test_static_rows_keep_the_eos_options_and_cache_refresh_of_the_loop(eos_model, prompts, options):
    batch, alone = assert_rows_decode_as_alone(eos_model, prompts, eos_token_ids=(EOS, EOT), **options)
    if options.get("stop_at_eos"):
        assert any(single.nfe < 32 for single in alone)  # some row stopped early
        assert (batch.generated == EOS).any()


def test_a_one_row_static_decode_counts_its_forwards_and_tokens(model, prompts):
    prompt = prompts[0]
    total = len(prompt) + 32
    plain, prefix, dual = (
        decode(model, prompt, cache=c, decode="static", steps=16) for c in (None, "prefix", "dual")
    )
    assert plain.nfe == prefix.nfe == dual.nfe == 16
    assert plain.forward_tokens == 16 * total
    # Per block one full forward, then three cache steps: every generated position (prefix; the loop
    # recomputes the block and what follows) or the block (dual, as the loop).
    assert prefix.forward_tokens == 4 * (total + 3 * 32)
    assert dual.forward_tokens == 4 * (total + 3 * 8)
    assert prefix.row_nfe.tolist() == [16]


@pytest.mark.parametrize(
    "backend, cache",
    [("eager", None), ("eager", "prefix"), ("eager", "dual"), ("aot_eager", "dual")],
    ids=["plain", "prefix", "dual", "dual-aot"],
)
def test_static_steps_compile_whole_and_give_the_same_tokens(eos_model, prompts, cache, backend):
    # fullgraph=True raises on any graph break: a host sync (.item(), .tolist(), a Python branch on
    # a tensor) or a data-dependent shape inside a step would fail here.
    ids, mask = left_pad(prompts, pad_id=EOS)
    settings = dict(
        gen_length=16,
        block_length=8,
        steps=16,
        mask_id=MASK,
        threshold=0.5,
        cache=cache,
        cache_refresh=None,
        eos_token_ids=(EOS, EOT),
        min_new_tokens=3,
        stop_at_eos=True,
        defer_eos=True,
    )
    with torch.no_grad():
        compiled = StaticDecoder(eos_model, ids, mask, **settings).run("compiled", compile_backend=backend)
        eager = StaticDecoder(eos_model, ids, mask, **settings).run("static")
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.equal(compiled.commit_step, eager.commit_step) and compiled.nfe == eager.nfe


def test_graph_decoding_off_cuda_runs_the_same_steps_eagerly(model, prompts):
    ids, mask = left_pad(prompts, pad_id=EOS)
    static = decode(model, ids, attention_mask=mask, decode="static", cache="dual", threshold=0.5)
    graph = decode(model, ids, attention_mask=mask, decode="graph", cache="dual", threshold=0.5)
    assert torch.equal(graph.sequences, static.sequences) and graph.nfe == static.nfe


def test_ranks_from_pairwise_comparisons_are_a_stable_descending_argsorts():
    assert descending_rank(torch.tensor([[0.5, 0.9, 0.5, float("-inf"), 0.1, float("-inf")]])).tolist() == [
        [1, 0, 2, 4, 3, 5]
    ]
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (64, 9), generator=generator).double()  # many ties
    values[torch.rand(64, 9, generator=generator) < 0.2] = float("-inf")
    order = values.argsort(dim=-1, descending=True, stable=True)
    expected = torch.empty_like(order).scatter_(-1, order, torch.arange(9).expand_as(order))
    assert torch.equal(descending_rank(values), expected)


def test_static_cache_span_writes_fresh_columns_in_place_and_keeps_the_rest():
    buffers = (torch.arange(2 * 5, dtype=torch.float).view(2, 1, 5, 1), torch.zeros(2, 1, 5, 1))
    key, value = torch.full((2, 1, 3, 1), -1.0), torch.full((2, 1, 3, 1), 7.0)  # [B, n_kv, T, hs]
    span = StaticCacheSpan(
        columns=torch.tensor([[1, 2, 3], [0, 2, 4]]), fresh=torch.tensor([[True, False, True], [True] * 3])
    )
    k, v = span.write(buffers, key, value)
    assert k is buffers[0] and v is buffers[1]  # the buffers themselves, written in place
    assert k.flatten().tolist() == [0, -1, 2, -1, 4, -1, 6, -1, 8, -1]
    assert v.flatten().tolist() == [0, 7, 0, 7, 0, 7, 0, 7, 0, 7]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decode="fast"), "unknown decode"),
        (dict(decode="static", temperature=0.7), "temperature > 0 needs decode='loop'"),
        (dict(decode="graph", remasking="random"), "remasking 'random' needs decode='loop'"),
        (dict(decode="static", confidence="llada"), "confidence 'llada' needs decode='loop'"),
        (dict(decode="static", cfg_scale=1.0), "cfg_scale > 0 needs decode='loop'"),
        (dict(decode="static", callback=print), "callback (--stream) needs decode='loop'"),
    ],
)
def test_what_the_static_steps_do_not_do_is_one_clear_error(model, prompts, kwargs, message):
    with pytest.raises(BlocksftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(model, prompts[0], **kwargs)
    if "callback" not in kwargs:
        with pytest.raises(BlocksftError, match="decode"):
            SamplerConfig(**kwargs)


def test_a_decoder_cache_reuses_one_decoder_for_prompts_of_the_same_shape(model, prompts):
    decoders = DecoderCache(size=1)
    settings = dict(decode="static", cache="dual", threshold=0.5, decoders=decoders)
    ids, mask = left_pad(prompts, pad_id=EOS)
    first = decode(model, ids, attention_mask=mask, **settings)
    (kept,) = decoders.decoders.values()
    flipped = decode(model, ids.flip(0), attention_mask=mask.flip(0), **settings)  # same shape: reused
    assert list(decoders.decoders.values()) == [kept]
    fresh = decode(
        model, ids.flip(0), attention_mask=mask.flip(0), decode="static", cache="dual", threshold=0.5
    )
    assert torch.equal(flipped.sequences, fresh.sequences) and torch.equal(flipped.row_nfe, fresh.row_nfe)
    assert torch.equal(flipped.sequences.flip(0), first.sequences)
    decode(model, prompts[0], **settings)  # another shape: a new decoder, the old one let go
    assert len(decoders.decoders) == 1 and next(iter(decoders.decoders.values())) is not kept


def test_the_command_line_decodes_with_static_steps_and_refuses_streaming_them(tiny_checkpoint, capsys):
    small = ["--model", tiny_checkpoint, "--prompt", "How many?", "--gen-length", "16", "--block-length", "8"]
    assert main(["generate", *small, "--steps", "16"]) == 0
    looped = capsys.readouterr().out
    assert main(["generate", *small, "--steps", "16", "--decode", "static"]) == 0
    assert capsys.readouterr().out == looped
    assert main(["generate", *small, "--steps", "16", "--decode", "graph", "--stream"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--stream shows every step: it needs --decode loop" in err
