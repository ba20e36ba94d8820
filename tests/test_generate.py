"""Semi-autoregressive block decoding: agreement with plain re-statements of LLaDA's algorithm and of its
generate.py (both confidence modes, fp32 and bf16), batching,
caches, threshold decoding, EOS handling, errors, the command line and the benchmark."""

import functools
import io
import os
import subprocess
import sys
from copy import deepcopy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from blocksft.bench.generate import main as bench_main
from blocksft.cli import main
from blocksft.config.sampler import SamplerConfig
from blocksft.errors import BlocksftError
from blocksft.generation.run import CanvasStream
from blocksft.generation.sampler import generate
from blocksft.generation.text import cut_at_stop, decode_answer, encode_prompt, render_canvas
from blocksft.generation.transfer import left_pad, select_transfer, select_transfer_topk, transfer_schedule
from blocksft.reference import generate_py
from blocksft.special_tokens import resolve_mask_id, stop_token_ids
from blocksft.testing import tiny_llada_model, tiny_tokenizer

MASK, EOS, EOT = 2, 1, 5  # ids of the tiny tokenizer


@functools.cache
def _tokenizer():
    return tiny_tokenizer()


PROMPTS = ["Natalia sold clips", "How many?", "Weng earns $12 an hour for babysitting."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    # init_std 0.4 instead of 0.02: at the default every masked position predicts nearly the same
    # distribution (top probability ~1/300, confidence gaps ~1e-5), which would test little.
    return tiny_llada_model(_tokenizer(), seed=0, init_std=0.4)


@pytest.fixture(scope="module")
def prompts():
    tok = _tokenizer()
    return [tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def eos_model(model):
    """Predicts EOS at some positions of every prompt (its LM-head row scaled up)."""
    copy = deepcopy(model)
    with torch.no_grad():
        copy.model.transformer.ff_out.weight[EOS] *= 3.0
    return copy


def run(model, ids, **kwargs):
    kwargs = {"gen_length": 16, "block_length": 8, "steps": 16, "mask_id": MASK, **kwargs}
    ids = torch.tensor([ids]) if isinstance(ids[0], int) else ids
    return generate(model, ids, **kwargs)


# --------------------------------------------------------------------------------------------------
# The reference: LLaDA's sampler re-stated from its description, one sequence, plain loops.
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_generate(
    model,
    prompt,
    *,
    gen_length,
    block_length,
    steps,
    temperature=0.0,
    remasking="low_confidence",
    cfg_scale=0.0,
    threshold=None,
    cache=None,
    defer_ids=(),
    generator=None,
):
    x = list(prompt) + [MASK] * gen_length
    n_prompt, vocab = len(prompt), model.config.vocab_size
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = n_prompt + block * block_length, n_prompt + (block + 1) * block_length
        # The same count every step, the remainder to the first steps.
        counts = [block_length // steps_per_block] * steps_per_block
        for i in range(block_length % steps_per_block):
            counts[i] += 1
        kv = None
        for step in range(steps_per_block):
            if MASK not in x[lo:hi]:
                break
            ids = torch.tensor([x])
            if cache is None or step == 0:  # a full forward (it fills the cache at a block's start)
                out = model(ids, use_cache=cache is not None)
                kv, logits = out.kv_cache, out.logits[0, lo:hi]
            else:  # Fast-dLLM: the prefix (and with "dual" the suffix) from the block-start cache
                stop = len(x) if cache == "prefix" else hi
                logits = model(ids[:, lo:stop], kv_cache=kv, cache_span=(lo, stop)).logits[0, : hi - lo]
            if cfg_scale > 0:
                uncond = torch.tensor([[MASK] * n_prompt + x[n_prompt:]])
                un_logits = model(uncond).logits[0, lo:hi]
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            if temperature > 0:
                noise = torch.rand((1, block_length, vocab), dtype=torch.float64, generator=generator)[0]
            if remasking == "random":
                random_confidence = torch.rand((1, block_length), dtype=torch.float64, generator=generator)[0]
            candidates = []
            for j in range(lo, hi):
                if x[j] != MASK:
                    continue
                row = logits[j - lo].double()
                if temperature > 0:
                    token = int(torch.argmax(row.exp() / (-torch.log(noise[j - lo])) ** temperature))
                else:
                    token = int(torch.argmax(row))
                if remasking == "low_confidence":
                    confidence = float(torch.softmax(row, -1)[token])
                else:
                    confidence = float(random_confidence[j - lo])
                candidates.append((confidence, j, token))
            # Most confident first, ties to the left; with defer_ids, those predictions go last.
            candidates.sort(key=lambda c: (c[2] in defer_ids, -c[0], c[1]))
            take = counts[step]
            if threshold is not None:
                take = max(take, 1, sum(c[0] > threshold for c in candidates))
            for _, j, token in candidates[:take]:
                x[j] = token
    return x


@pytest.mark.parametrize(
    "gen_length,block_length,steps",
    [(16, 16, 16), (32, 8, 32), (32, 8, 12), (24, 8, 6), (16, 4, 4), (8, 4, 16)],
    ids=["one-block", "one-per-step", "uneven-counts", "two-per-block", "one-step-per-block", "steps>gen"],
)
def test_matches_reference_at_temperature_zero(model, prompts, gen_length, block_length, steps):
    settings = dict(gen_length=gen_length, block_length=block_length, steps=steps)
    for prompt in prompts[:2]:
        out = run(model, prompt, **settings)
        assert out.sequences[0].tolist() == reference_generate(model, prompt, **settings)
        # A block ends when it has no mask left: steps beyond block_length would commit nothing.
        num_blocks = gen_length // block_length
        assert out.nfe == num_blocks * min(steps // num_blocks, block_length)


@pytest.mark.parametrize(
    "options",
    [
        dict(cfg_scale=1.5),
        dict(remasking="random", seed=3),
        dict(temperature=0.7, seed=4),
        dict(temperature=1.0, remasking="random", seed=5),
        dict(threshold=0.5),
        dict(cache="prefix", steps=12),
        dict(cache="dual", steps=12),
        dict(cache="prefix", threshold=0.5, steps=12),
    ],
    ids=[
        "cfg",
        "random",
        "temperature",
        "temperature+random",
        "threshold",
        "prefix",
        "dual",
        "prefix+threshold",
    ],
)
def test_matches_reference_with_options(model, prompts, options):
    options = dict(options)
    seed = options.pop("seed", None)
    settings = dict(gen_length=24, block_length=8, steps=options.pop("steps", 24), **options)
    ours = run(
        model, prompts[0], generator=None if seed is None else torch.Generator().manual_seed(seed), **settings
    )
    reference = reference_generate(
        model, prompts[0], generator=None if seed is None else torch.Generator().manual_seed(seed), **settings
    )
    assert ours.sequences[0].tolist() == reference


# --------------------------------------------------------------------------------------------------
# LLaDA's generate.py restated as published (blocksft.reference.generate_py: the canvas, the softmax
# in the logits' dtype, topk), against the two confidence modes.
# --------------------------------------------------------------------------------------------------


GENERATE_PY_SETTINGS = [
    dict(gen_length=32, block_length=8, steps=32),
    dict(gen_length=32, block_length=8, steps=12),
    dict(gen_length=16, block_length=16, steps=16),
    dict(gen_length=16, block_length=8, steps=16, cfg_scale=1.5),
]
MORE_PROMPTS = [*PROMPTS, "Lily runs 12 km/h for 4 hours.", "A train leaves at noon.", "Julie reads 12 pages"]


@pytest.mark.parametrize("init_std", [0.02, 0.4])
def test_llada_confidence_is_generate_py_token_for_token_in_bf16(init_std):
    tok = _tokenizer()
    model = tiny_llada_model(tok, seed=0, init_std=init_std).to(torch.bfloat16)
    differs = 0
    for text in MORE_PROMPTS:
        prompt = tok(text)["input_ids"]
        for settings in GENERATE_PY_SETTINGS:
            expected = generate_py(model, prompt, mask_id=MASK, **settings)
            assert run(model, prompt, confidence="llada", **settings).sequences[0].tolist() == expected
            differs += run(model, prompt, **settings).sequences[0].tolist() != expected
    if init_std == 0.02:  # flat predictions: bf16 probabilities tie, float64 ones do not
        assert differs > 0


@pytest.mark.parametrize("init_std", [0.02, 0.4])
def test_both_confidences_are_generate_py_token_for_token_in_fp32(init_std):
    tok = _tokenizer()
    model = tiny_llada_model(tok, seed=0, init_std=init_std)
    for text in MORE_PROMPTS:
        prompt = tok(text)["input_ids"]
        for settings in GENERATE_PY_SETTINGS:
            expected = generate_py(model, prompt, mask_id=MASK, **settings)
            for confidence in ("float64", "llada"):
                assert run(model, prompt, confidence=confidence, **settings).sequences[0].tolist() == expected


def test_topk_selection_keeps_the_left_tie_rule_apart_from_ties():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(4, 8, dtype=torch.float64, generator=generator)
    masked = torch.rand(4, 8, generator=generator) < 0.7
    counts = torch.tensor([1, 2, 3, 8])
    for threshold in (None, 0.5):
        left = select_transfer(confidence, masked, counts, threshold)
        topk = select_transfer_topk(confidence, masked, counts, threshold, offset=5, width=20)
        assert torch.equal(left, topk)
    # Four equal confidences, two to commit: torch.topk's choice over the -inf-padded row.
    tied = torch.full((1, 4), 0.25, dtype=torch.bfloat16)
    everywhere = torch.ones(1, 4, dtype=torch.bool)
    row = torch.full((12,), float("-inf"), dtype=torch.bfloat16)
    row[3:7] = 0.25
    expected = torch.zeros(12, dtype=torch.bool)
    expected[torch.topk(row, k=2).indices] = True
    chosen = select_transfer_topk(tied, everywhere, torch.tensor([2]), offset=3, width=12)
    assert torch.equal(chosen[0], expected[3:7]) and int(chosen.sum()) == 2


def test_threshold_setting_in_that_test_actually_commits_early(model, prompts):
    # The test model's top probabilities spread over about 0.1 to 0.9.
    out = run(model, prompts[0], gen_length=24, block_length=8, steps=24, threshold=0.5)
    assert 3 < out.nfe < 24


def test_deterministic_at_temperature_zero_and_seeded_sampling_reproducible(model, prompts):
    assert torch.equal(run(model, prompts[0]).sequences, run(model, prompts[0]).sequences)

    def sample(seed):
        return run(
            model, prompts[0], temperature=1.0, generator=torch.Generator().manual_seed(seed)
        ).sequences

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


# --------------------------------------------------------------------------------------------------
# Invariants: schedule, no re-masking, prompt untouched, batching.
# --------------------------------------------------------------------------------------------------


def test_transfer_schedule_spreads_the_remainder_first():
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert transfer_schedule(8, 8) == [1] * 8
    assert transfer_schedule(4, 6) == [1, 1, 1, 1, 0, 0]
    assert sum(transfer_schedule(32, 5)) == 32


def test_select_transfer_counts_threshold_and_ties():
    confidence = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.95, 0.2, 0.97, 0.99]], dtype=torch.float64)
    masked = torch.tensor([[True, False, True, True], [True, True, True, False]])
    chosen = select_transfer(confidence, masked, torch.tensor([2, 1]))
    # Row 0: 0.9 is not masked; the tie 0.5/0.5 goes left first, so both 0.5s; row 1: 0.97.
    assert chosen.tolist() == [[False, False, True, True], [False, False, True, False]]
    chosen = select_transfer(confidence, masked, torch.tensor([0, 1]), threshold=0.9)
    # Row 0: no masked position above 0.9, still at least one; row 1: 0.95 and 0.97 (0.99 is not masked).
    assert chosen.tolist() == [[False, False, True, False], [True, False, True, False]]
    assert not select_transfer(
        confidence, torch.zeros_like(masked), torch.tensor([3, 3]), threshold=0.0
    ).any()


def test_every_step_commits_its_count_in_its_block_and_never_remasks(model, prompts):
    canvases, committed = [], []

    def record(step):
        canvases.append(step.canvas.clone())
        committed.append(step.committed.clone())

    prompt = torch.tensor([prompts[2]])
    out = generate(model, prompt, gen_length=24, block_length=8, steps=9, mask_id=MASK, callback=record)
    n_prompt = prompt.shape[1]
    assert len(canvases) == 9 and out.nfe == 9
    previous = torch.cat([prompt, torch.full((1, 24), MASK)], 1)
    for index, (canvas, new) in enumerate(zip(canvases, committed)):
        block, step = divmod(index, 3)
        was_filled = previous != MASK
        assert torch.equal(canvas[was_filled], previous[was_filled])  # never re-masked, never changed
        assert torch.equal(canvas[:, :n_prompt], prompt)  # prompt untouched
        changed = (canvas != previous).nonzero()[:, 1]
        assert changed.tolist() == new[0].nonzero()[:, 0].tolist()
        assert len(changed) == [3, 3, 2][step]
        lo = n_prompt + block * 8
        assert ((changed >= lo) & (changed < lo + 8)).all()  # only inside the current block
        previous = canvas
    assert (out.sequences != MASK).all()  # every mask filled
    assert sorted(set(out.commit_step[0].tolist())) == list(range(9))


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(cfg_scale=1.0),
        dict(cache="prefix"),
        dict(cache="dual"),
        dict(threshold=0.5),
        dict(remasking="random"),
    ],
    ids=["plain", "cfg", "prefix", "dual", "threshold", "random"],
)
def test_left_padded_batch_equals_one_by_one(model, prompts, options):
    settings = dict(gen_length=16, block_length=8, steps=8, **options)
    ids, mask = left_pad(prompts, pad_id=EOS)
    assert mask.sum(1).tolist() == [len(p) for p in prompts] and (ids[mask == 0] == EOS).all()
    if options.get("remasking") == "random":  # same draws only for one row at a time: a one-row "batch"
        ids, mask = left_pad([prompts[1]], pad_id=EOS)
        ids, mask = (
            torch.cat([torch.full((1, 3), EOS), ids], 1),
            torch.cat([torch.zeros(1, 3, dtype=int), mask], 1),
        )
        settings["generator"] = torch.Generator().manual_seed(0)
        batch = run(model, ids, attention_mask=mask, **settings)
        settings["generator"] = torch.Generator().manual_seed(0)
        alone = run(model, prompts[1], **settings)
        assert torch.equal(batch.generated, alone.generated)
        return
    batch = run(model, ids, attention_mask=mask, **settings)
    assert torch.equal(batch.sequences[:, : ids.shape[1]], ids)
    for row, prompt in enumerate(prompts):
        alone = run(model, prompt, **settings)
        assert torch.equal(batch.generated[row], alone.generated[0]), row


# --------------------------------------------------------------------------------------------------
# Caches and threshold: NFE and cost counts, and the equalities the algorithm guarantees.
# --------------------------------------------------------------------------------------------------


def test_nfe_and_forward_tokens_exact_counts(model, prompts):
    prompt = prompts[0]
    total = len(prompt) + 32
    settings = dict(gen_length=32, block_length=8, steps=16)
    plain, prefix, dual = (run(model, prompt, cache=c, **settings) for c in (None, "prefix", "dual"))
    assert plain.nfe == prefix.nfe == dual.nfe == 16
    assert plain.forward_tokens == 16 * total
    # Per block: one full forward, then the block + everything after it (prefix) or the block (dual).
    starts = [len(prompt) + 8 * b for b in range(4)]
    assert prefix.forward_tokens == sum(total + 3 * (total - s) for s in starts)
    assert dual.forward_tokens == 4 * (total + 3 * 8)
    assert run(model, prompt, cfg_scale=1.0, **settings).nfe == 32  # guidance: two evaluations per step
    assert run(model, prompt, threshold=0.0, **settings).nfe == 4  # every probability > 0: one step per block
    assert run(model, prompt, threshold=0.0, cache="dual", **settings).nfe == 4


def test_threshold_one_never_commits_early(model, prompts):
    for cache in (None, "prefix", "dual"):
        settings = dict(gen_length=32, block_length=8, steps=32, cache=cache)
        base = run(model, prompts[0], **settings)
        top = run(model, prompts[0], threshold=1.0, **settings)
        assert torch.equal(top.sequences, base.sequences) and top.nfe == base.nfe == 32


def test_threshold_commits_every_confident_prediction_and_drops_nfe(model, prompts):
    plain = run(model, prompts[0], gen_length=32, block_length=8, steps=32)
    steps = []

    def record(step):
        steps.append(step.committed.sum().item())

    fast = run(model, prompts[0], gen_length=32, block_length=8, steps=32, threshold=0.5, callback=record)
    assert fast.nfe == len(steps) < plain.nfe and max(steps) > 1
    assert (fast.sequences != MASK).all()
    # The first step is the same forward in both: plain commits its top token, threshold that one and more.
    first = fast.commit_step[0] == 0
    assert first.sum() == steps[0] and (plain.commit_step[0] == 0).sum() == 1
    assert first[plain.commit_step[0] == 0].all()
    assert torch.equal(fast.generated[0, first], plain.generated[0, first])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_equals_plain_when_every_step_is_a_full_forward(model, prompts, cache):
    # One step per block: the cache is built and never read.
    one = dict(gen_length=32, block_length=8, steps=4)
    assert torch.equal(
        run(model, prompts[0], cache=cache, **one).sequences, run(model, prompts[0], **one).sequences
    )
    # Refreshed at every step: a full forward every step, whatever the number of steps.
    many = dict(gen_length=32, block_length=8, steps=16)
    refreshed = run(model, prompts[0], cache=cache, cache_refresh=1, **many)
    plain = run(model, prompts[0], **many)
    assert torch.equal(refreshed.sequences, plain.sequences)
    assert refreshed.forward_tokens == plain.forward_tokens


def test_cache_is_an_approximation_otherwise(model, prompts):
    # Documented, not a bug: the cached keys/values were computed with the block all masks.
    settings = dict(gen_length=32, block_length=8, steps=32)
    plain = run(model, prompts[0], **settings)
    differs = [
        not torch.equal(run(model, prompts[0], cache=c, **settings).sequences, plain.sequences)
        for c in ("prefix", "dual")
    ]
    assert any(differs)


# --------------------------------------------------------------------------------------------------
# EOS handling.
# --------------------------------------------------------------------------------------------------


def test_min_new_tokens_suppresses_eos_and_eot(eos_model, prompts):
    free = run(eos_model, prompts[0], gen_length=32, block_length=8, steps=16)
    assert (free.generated[0, :8] == EOS).any()
    held = run(
        eos_model,
        prompts[0],
        gen_length=32,
        block_length=8,
        steps=16,
        eos_token_ids=(EOS, EOT),
        min_new_tokens=12,
    )
    assert not torch.isin(held.generated[0, :12], torch.tensor([EOS, EOT])).any()
    assert (held.generated[0, 12:] == EOS).any()


@pytest.mark.parametrize(
    "options", [dict(), dict(cache="dual", threshold=0.5)], ids=["plain", "dual+threshold"]
)
def test_stop_at_eos_saves_forwards_and_changes_nothing_before(eos_model, prompts, options):
    ids, mask = left_pad(prompts, pad_id=EOS)
    settings = dict(
        gen_length=32, block_length=8, steps=16, attention_mask=mask, eos_token_ids=(EOS, EOT), **options
    )
    full = run(eos_model, ids, **settings)
    stopped = run(eos_model, ids, stop_at_eos=True, **settings)
    n_prompt = ids.shape[1]
    assert torch.equal(full.num_tokens, stopped.num_tokens)
    blocks_used = []
    for row in range(len(prompts)):
        first_eos = int(stopped.num_tokens[row])
        assert first_eos < 32
        end = (first_eos // 8 + 1) * 8  # the block that produced the EOS
        blocks_used.append(end // 8)
        assert torch.equal(stopped.generated[row, :end], full.generated[row, :end])
        assert (stopped.generated[row, end:] == EOS).all() and (stopped.commit_step[row, end:] == -1).all()
    assert stopped.nfe < full.nfe
    if not options:
        assert stopped.nfe == max(blocks_used) * 4 and full.nfe == 16
    assert decode_answer(_tokenizer(), stopped.sequences, n_prompt) == decode_answer(
        _tokenizer(), full.sequences, n_prompt
    )


def test_defer_eos_ranks_eos_predictions_last(eos_model, prompts):
    settings = dict(gen_length=16, block_length=8, steps=16)
    for prompt in prompts:
        deferred = run(eos_model, prompt, eos_token_ids=(EOS, EOT), defer_eos=True, **settings)
        assert deferred.sequences[0].tolist() == reference_generate(
            eos_model, prompt, defer_ids=(EOS, EOT), **settings
        )
    # Not vacuous: here the most confident first prediction is EOS, committed first unless deferred.
    plain = run(eos_model, prompts[0], **settings)
    deferred = run(eos_model, prompts[0], eos_token_ids=(EOS, EOT), defer_eos=True, **settings)
    assert plain.generated[0, plain.commit_step[0] == 0].tolist() == [EOS]
    assert deferred.generated[0, deferred.commit_step[0] == 0].tolist() != [EOS]


# --------------------------------------------------------------------------------------------------
# Bad input, other models, text helpers.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gen_length=30, block_length=8), "not a multiple of block_length"),
        (dict(gen_length=32, block_length=8, steps=6), "cannot be split evenly over the 4 blocks"),
        (dict(gen_length=0), "gen_length must be a positive"),
        (dict(steps=0), "steps must be positive"),
        (dict(block_length=0), "block_length must be positive"),
        (dict(remasking="lowest"), "unknown remasking"),
        (dict(cache="full"), "unknown cache"),
        (dict(threshold=1.5), "threshold must lie in"),
        (dict(threshold=0.9, remasking="random"), "needs remasking='low_confidence'"),
        (dict(cache_refresh=2), "cache_refresh needs a cache"),
        (dict(stop_at_eos=True), "stop_at_eos needs eos_token_ids"),
        (dict(min_new_tokens=4), "min_new_tokens needs eos_token_ids"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(mask_id=10_000), "outside the model's vocabulary"),
    ],
)
def test_bad_arguments_are_clear_errors(model, prompts, kwargs, message):
    with pytest.raises(BlocksftError, match=message):
        run(model, prompts[0], **kwargs)


def test_bad_prompts_are_clear_errors(model, prompts):
    with pytest.raises(BlocksftError, match="contains the mask id 2 \\(row 0, position 3\\)"):
        run(model, [0, 7, 8, MASK, 9])
    with pytest.raises(BlocksftError, match="contains the mask id"):
        run(model, *left_pad(prompts, pad_id=MASK)[:1])
    with pytest.raises(BlocksftError, match="left padding"):
        ids, mask = left_pad(prompts, pad_id=EOS)
        run(model, ids, attention_mask=mask.flip(1))
    with pytest.raises(BlocksftError, match="LongTensor"):
        generate(model, prompts, gen_length=8, block_length=8, steps=8, mask_id=MASK)
    with pytest.raises(BlocksftError, match="generator is on"):
        run(model, prompts[0], generator=SimpleNamespace(device=torch.device("meta")))


def test_sampler_config_checks_like_generate():
    assert SamplerConfig().generate_kwargs()["steps"] == 256
    with pytest.raises(BlocksftError, match="not a multiple"):
        SamplerConfig(gen_length=100)


class WrapperModel(nn.Module):
    """Stands for a PEFT wrapper: the sampler must call the LLaDA model behind it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_base_model(self):
        return self.inner

    def forward(self, *args, **kwargs):
        raise AssertionError("the sampler should call the base model")


def test_wrapped_model_is_looked_through(model, prompts):
    settings = dict(gen_length=16, block_length=8, steps=16, cache="prefix")
    assert torch.equal(
        run(WrapperModel(model), prompts[0], **settings).sequences,
        run(model, prompts[0], **settings).sequences,
    )


class RemoteStyleModel(nn.Module):
    """Stands for a remote-code LLaDA: forward(input_ids, attention_mask) -> .logits, nothing else."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(attention_mask is not None)
        return SimpleNamespace(logits=self.inner(input_ids, attention_mask=attention_mask).logits)


def test_remote_code_model_gets_ids_only_and_refuses_caches(model, prompts):
    remote = RemoteStyleModel(model)
    assert torch.equal(run(remote, prompts[0]).sequences, run(model, prompts[0]).sequences)
    assert remote.calls and not any(remote.calls)  # no mask passed when nothing is padded
    with pytest.raises(BlocksftError, match="cache='prefix' needs blocksft's own model class"):
        run(remote, prompts[0], cache="prefix")
    ids, mask = left_pad([prompts[0], prompts[2]], pad_id=EOS)
    with pytest.warns(UserWarning, match="ignores the attention mask"):
        run(remote, ids, attention_mask=mask)
    assert all(remote.calls[-16:])


def test_decode_answer_cuts_at_the_first_stop_token():
    tok = _tokenizer()
    assert stop_token_ids(tok) == (EOS, EOT)
    hello, world = (
        tok("hello", add_special_tokens=False)["input_ids"],
        tok(" world", add_special_tokens=False)["input_ids"],
    )
    rows = [[0, 9] + hello + [EOT, EOS] + world, [0, 9] + hello + world + [EOS, EOS]]
    assert decode_answer(tok, torch.tensor(rows), 2) == ["hello", "hello world"]
    assert cut_at_stop([4, 5, 6, 1], (1,)) == [4, 5, 6]
    assert render_canvas(tok, hello + [MASK, MASK] + world, MASK) == "hello░░ world"


def test_mask_id_resolution_and_prompt_encoding():
    tok = _tokenizer()
    assert resolve_mask_id(SimpleNamespace(mask_token_id=2), tok) == 2
    assert resolve_mask_id(SimpleNamespace(), tok) == 2
    assert resolve_mask_id(SimpleNamespace(mask_token_id=7), tok, override=2) == 2
    with pytest.raises(BlocksftError, match="mask_token_id 7 differs from the tokenizer's <.mdm_mask.> id 2"):
        resolve_mask_id(SimpleNamespace(mask_token_id=7), tok)
    with pytest.raises(BlocksftError, match="--mask-id 7 differs from the tokenizer's <.mdm_mask.> id 2"):
        resolve_mask_id(SimpleNamespace(mask_token_id=2), tok, override=7)  # as train refuses it
    chat = encode_prompt(tok, "Hi", chat=True)
    assert chat[0] == 0 and chat.count(0) == 1  # one BOS, from the template
    assert tok.decode(chat).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert encode_prompt(tok, "Hi") == tok("Hi")["input_ids"]


# --------------------------------------------------------------------------------------------------
# The command line and the benchmark.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("tiny-llada")
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def test_cli_prints_the_answer(checkpoint, model, capsys):
    flags = ["--gen-length", "16", "--block-length", "8", "--steps", "8"]
    assert main(["generate", "--model", str(checkpoint), "--prompt", PROMPTS[0], "--chat", *flags]) == 0
    printed = capsys.readouterr().out
    tok = _tokenizer()
    ids = torch.tensor([encode_prompt(tok, PROMPTS[0], chat=True)])
    out = generate(model, ids, gen_length=16, block_length=8, steps=8, mask_id=MASK)
    assert printed == decode_answer(tok, out.sequences, out.prompt_length)[0] + "\n"


def test_cli_decodes_with_the_llada_confidence_in_bf16(tiny_checkpoint, capsys):
    tok = _tokenizer()
    model = tiny_llada_model(tok, seed=0).to(torch.bfloat16)  # what tiny_checkpoint holds, in bf16
    ids = torch.tensor([encode_prompt(tok, PROMPTS[2], chat=False)])
    answers = {
        confidence: decode_answer(tok, run(model, ids, confidence=confidence).sequences, ids.shape[1])[0]
        for confidence in ("float64", "llada")
    }
    assert answers["float64"] != answers["llada"]  # bf16 probabilities tie where float64 ones do not
    flags = ["--gen-length", "16", "--block-length", "8", "--steps", "16", "--dtype", "bf16"]
    argv = ["generate", "--model", tiny_checkpoint, "--prompt", PROMPTS[2], *flags, "--device", "cpu"]
    assert main([*argv, "--confidence", "llada"]) == 0
    assert capsys.readouterr().out == answers["llada"] + "\n"


def test_cli_stream_prints_one_line_per_block_off_a_terminal(checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "blocksft", "generate", "--model", str(checkpoint), "--prompt", "Hi",
         "--stream", "--gen-length", "24", "--block-length", "8", "--steps", "12", "--threshold", "0.9",
         "--cache", "dual"],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["block 1", "block 2", "block 3"]
    assert lines[0].count("░") == 16 and lines[1].count("░") == 8 and "░" not in lines[2]
    assert "\x1b[" not in result.stdout


def test_cli_reads_a_yaml_config_under_the_flags(checkpoint, tmp_path, capsys):
    recipe = tmp_path / "generate.yaml"
    recipe.write_text(f"model: {checkpoint}\ngen-length: 16\nblock_length: 8\nsteps: 4\ncache: dual\n")
    assert main(["generate", "--config", str(recipe), "--prompt", "Hi", "--steps", "16"]) == 0
    by_yaml = capsys.readouterr().out
    flags = ["--gen-length", "16", "--block-length", "8", "--steps", "16", "--cache", "dual"]
    assert main(["generate", "--model", str(checkpoint), "--prompt", "Hi", *flags]) == 0
    assert capsys.readouterr().out == by_yaml


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_stream_redraws_in_place_on_a_terminal(model, prompts, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wraps: each frame is 2 lines
    screen = FakeTerminal()
    stream = CanvasStream(_tokenizer(), MASK, len(prompts[0]), out=screen)
    run(model, prompts[0], gen_length=16, block_length=8, steps=4, callback=stream)
    stream.close()
    shown = screen.getvalue()
    frames = shown.split("\x1b[")
    assert shown.count("[block ") == 4  # one frame per step
    assert frames[0].startswith("[block 1, step 1, NFE 1]\n") and frames[0].count("░") == 12
    assert frames[1] == "2F" and frames[2].startswith("J[block 1, step 2, NFE 2]\n")  # back 2 lines, clear
    last = frames[-3].split("[block 2, step 2, NFE 4]\n")[1]
    assert "░" not in last and shown.endswith("\x1b[2F\x1b[J")  # the last frame erased for the answer


def test_cli_bad_input_is_one_line(checkpoint, capsys):
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", "--gen-length", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a multiple of block_length" in err and len(err.splitlines()) == 1
    assert main(["generate", "--model", str(checkpoint / "nope"), "--prompt", "x"]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    small = ["--gen-length", "8", "--block-length", "8", "--steps", "4"]
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", "--mask-id", "2", *small]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(checkpoint), "--prompt", "x", "--mask-id", "3", *small]) == 2
    assert "--mask-id 3 differs from the tokenizer's" in capsys.readouterr().err


def test_benchmark_runs_quickly_on_a_tiny_shape(capsys):
    assert bench_main(["--tiny", "--gen-length", "16", "--block-length", "8", "--repeats", "1"]) == 0
    report = capsys.readouterr().out
    for mode in ("plain", "prefix", "dual", "threshold 0.9", "prefix + threshold 0.9"):
        assert f"| {mode} |" in report
    assert (
        bench_main(["--gpu-8b", "--device", "cpu", "--tiny", "--gen-length", "8", "--block-length", "8"]) == 0
    )
