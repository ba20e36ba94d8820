"""Noising, loss and objective registry: exact masks, fixed-seed statistics, loop equivalences."""

import itertools

import pytest
import torch

from blocksft.bench.noise import main
from blocksft.config.objective import ObjectiveOptions, available_objectives
from blocksft.config.train import TrainConfig
from blocksft.errors import BlocksftError
from blocksft.objectives import (
    NoisedBatch,
    TokenCounts,
    count_tokens,
    forward_flops,
    get_objective,
    masked_ce_loss,
    noise_blockwise,
    noise_fullseq,
    num_blocks,
    supervised_span_lens,
    training_step_flops,
)
from blocksft.reference import ReferenceBlockwiseDataset, ReferenceFullSeqDataset, reference_collate
from blocksft.special_tokens import mask_token_id
from blocksft.train.block_schedule import BlockSchedule

MASK = 0
PAD = 1


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_batch(rows):
    """Right-padded rows ``(prompt_len, answer_len)`` of length 15: ids 100.. then PAD."""
    ids = torch.full((len(rows), 15), PAD)
    for b, (plen, alen) in enumerate(rows):
        ids[b, : plen + alen] = torch.arange(100, 100 + plen + alen)
    prompt = torch.tensor([r[0] for r in rows])
    answer = torch.tensor([r[1] for r in rows])
    return ids, prompt, answer


def pattern(noised, loss_mask):
    """One string per row: P prompt/answer clean, M masked without loss, L loss, _ padding."""
    out = []
    for ids, loss in zip(noised.tolist(), loss_mask.tolist()):
        out.append(
            "".join("L" if lo else "M" if t == MASK else "_" if t == PAD else "." for t, lo in zip(ids, loss))
        )
    return out


# ----- exact masks on hand-made rows (prompt 3, answer 10, block 4: blocks 0..2, the last partial) -----


def test_num_blocks_rounds_up():
    assert num_blocks([10, 8, 1, 0, 32, 33], 4) == [3, 2, 1, 0, 8, 9]
    assert num_blocks(10, 4) == 3
    assert num_blocks(torch.tensor([10, 0]), 4).tolist() == [3, 0]


def test_exact_blockwise_masks_for_every_block():
    ids, prompt, answer = tiny_batch([(3, 10)] * 4 + [(5, 8)])
    # eps=1 makes p=1: the whole active block is masked, so the masks are deterministic
    out = noise_blockwise(
        ids, prompt, answer, [0, 1, 2, -1, 1], block_size=4, mask_id=MASK, eps=1.0, generator=gen()
    )
    assert pattern(out.noised_ids, out.loss_mask) == [
        "...LLLLMMMMMM__",  # block 0: positions 3-6 trained, suffix 7-12 hidden, padding untouched
        ".......LLLLMM__",  # block 1: prefix 3-6 clean, block 7-10, suffix 11-12
        "...........LL__",  # block 2: the partial last block (2 tokens), no suffix
        ".............__",  # block -1 (exhausted): all clean, no loss
        ".........LLLL__",  # prompt 5, answer 8: block 1 is positions 9-12, no suffix
    ]
    assert torch.equal(out.p, torch.ones(5))
    # the prompt and the padding keep their ids; loss positions are masked
    assert torch.equal(out.noised_ids[:, :3], ids[:, :3])
    assert torch.equal(out.noised_ids[:, 13:], ids[:, 13:])
    assert (out.noised_ids[out.loss_mask] == MASK).all()


def test_exact_prefix_and_suffix_switches():
    ids, prompt, answer = tiny_batch([(3, 10)] * 2)
    visible = noise_blockwise(
        ids,
        prompt,
        answer,
        [0, 1],
        block_size=4,
        mask_id=MASK,
        eps=1.0,
        suffix_mask_prob=0.0,
        generator=gen(),
    )
    assert pattern(visible.noised_ids, visible.loss_mask) == ["...LLLL......__", ".......LLLL..__"]
    noisy_prefix = noise_blockwise(
        ids,
        prompt,
        answer,
        [1, 2],
        block_size=4,
        mask_id=MASK,
        eps=1.0,
        prefix_mask_rate=1.0,
        generator=gen(),
    )
    assert pattern(noisy_prefix.noised_ids, noisy_prefix.loss_mask) == ["...MMMMLLLLMM__", "...MMMMMMMMLL__"]


def test_exact_fullseq_masks():
    ids, prompt, answer = tiny_batch([(3, 10), (5, 8)])
    out = noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=1.0, generator=gen())
    assert pattern(out.noised_ids, out.loss_mask) == ["...LLLLLLLLLL__", ".....LLLLLLLL__"]
    off = noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=1.0, active=torch.tensor([True, False]))
    assert pattern(off.noised_ids, off.loss_mask) == ["...LLLLLLLLLL__", ".............__"]


def test_supervise_padding_makes_padding_part_of_the_answer():
    ids, prompt, answer = tiny_batch([(3, 10)] * 2)
    # the answer now spans 3..14 (12 tokens, blocks 0..2): block 2 covers answer end + padding
    out = noise_blockwise(
        ids,
        prompt,
        answer,
        [2, 0],
        block_size=4,
        mask_id=MASK,
        eps=1.0,
        supervise_padding=True,
        generator=gen(),
    )
    assert out.loss_mask[0].nonzero().flatten().tolist() == [11, 12, 13, 14]
    assert out.noised_ids[1, 7:].eq(MASK).all()  # suffix masking now runs through the padding
    full = noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=1.0, supervise_padding=True)
    assert full.loss_mask[0].nonzero().flatten().tolist() == list(range(3, 15))
    with pytest.raises(ValueError, match="block_index 3"):
        noise_blockwise(ids, prompt, answer, [3, 0], block_size=4, mask_id=MASK, supervise_padding=True)


def test_bad_spans_and_blocks_are_clear_errors():
    ids, prompt, answer = tiny_batch([(3, 10)])
    with pytest.raises(ValueError, match=r"block_index 3 is outside \[-1, 2\]"):
        noise_blockwise(ids, prompt, answer, [3], block_size=4, mask_id=MASK)
    with pytest.raises(ValueError, match="does not fit a row of length 15"):
        noise_fullseq(ids, prompt, torch.tensor([13]), mask_id=MASK)
    with pytest.raises(ValueError, match="prompt_lens must have shape"):
        noise_fullseq(ids, [3, 3], answer, mask_id=MASK)
    with pytest.raises(BlocksftError, match="--suffix-mask-prob"):
        noise_blockwise(ids, prompt, answer, [0], block_size=4, mask_id=MASK, suffix_mask_prob=1.5)
    with pytest.raises(BlocksftError, match="--mask-eps"):
        noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=0.0)


# ----- statistics with a fixed seed -----


@pytest.fixture(scope="module")
def many_rows():
    """4000 rows: prompt 5, answer 60 (blocks of 16: 0..3, the last of 12 tokens), padded to 70."""
    rows, seq_len = 4000, 70
    ids = torch.randint(10, 50, (rows, seq_len), generator=gen(1))
    ids[:, 65:] = PAD
    blocks = torch.randint(0, 4, (rows,), generator=gen(2))
    return ids, torch.full((rows,), 5), torch.full((rows,), 60), blocks


def regions(blocks, rows, seq_len=70, prompt=5, answer=60, block=16):
    pos = torch.arange(seq_len)[None, :]
    start = prompt + blocks[:, None] * block
    end = torch.clamp(start + block, max=prompt + answer)
    in_block = (pos >= start) & (pos < end)
    return (pos >= prompt) & (pos < start), in_block, (pos >= end) & (pos < prompt + answer)


def test_blockwise_statistics(many_rows):
    ids, prompt, answer, blocks = many_rows
    out = noise_blockwise(
        ids, prompt, answer, blocks, block_size=16, mask_id=MASK, prefix_mask_rate=0.3, generator=gen(3)
    )
    prefix, block, suffix = regions(blocks, len(ids))
    masked = out.noised_ids == MASK
    # loss tokens are exactly the masked tokens of the active block
    assert torch.equal(out.loss_mask, masked & block)
    # p ~ U(1e-3, 1): mean ~0.5, range respected, and the block's mask rate follows each row's p
    assert out.p.min() >= 1e-3 and out.p.max() < 1.0
    assert abs(out.p.mean().item() - 0.5) < 0.015
    block_rate = (masked & block).sum(1) / block.sum(1)
    assert abs(block_rate.mean().item() - 0.5) < 0.015
    assert torch.corrcoef(torch.stack([block_rate, out.p]))[0, 1] > 0.9
    # prefix noise at the flag's rate, never in the loss; suffix fully masked at 1.0
    assert abs(masked[prefix].float().mean().item() - 0.3) < 0.01
    assert not (out.loss_mask & (prefix | suffix)).any()
    assert masked[suffix].all()
    # prompt and padding untouched
    assert torch.equal(out.noised_ids[:, :5], ids[:, :5]) and torch.equal(out.noised_ids[:, 65:], ids[:, 65:])


def test_suffix_probability_statistics(many_rows):
    ids, prompt, answer, blocks = many_rows
    _, block, suffix = regions(blocks, len(ids))
    for prob in (0.0, 0.4, 1.0):
        out = noise_blockwise(
            ids, prompt, answer, blocks, block_size=16, mask_id=MASK, suffix_mask_prob=prob, generator=gen(4)
        )
        rate = (out.noised_ids == MASK)[suffix].float().mean().item()
        assert rate == prob if prob in (0.0, 1.0) else abs(rate - prob) < 0.01
        assert torch.equal(out.loss_mask, (out.noised_ids == MASK) & block)


def test_fullseq_statistics(many_rows):
    ids, prompt, answer, _ = many_rows
    out = noise_fullseq(ids, prompt, answer, mask_id=MASK, generator=gen(5))
    pos = torch.arange(70)[None, :]
    in_answer = (pos >= 5) & (pos < 65)
    assert torch.equal(out.loss_mask, (out.noised_ids == MASK) & in_answer)
    assert not out.loss_mask[:, :5].any() and not out.loss_mask[:, 65:].any()
    assert abs(out.loss_mask.sum(1).float().mean().item() / 60 - 0.5) < 0.015


# ----- randomness and devices -----


@pytest.mark.parametrize("fn", ["blockwise", "fullseq"])
def test_same_generator_seed_same_noise_and_global_rng_untouched(fn):
    ids, prompt, answer = tiny_batch([(3, 10), (5, 8)])

    def run(seed):
        if fn == "blockwise":
            return noise_blockwise(
                ids, prompt, answer, [0, 1], block_size=4, mask_id=MASK, generator=gen(seed)
            )
        return noise_fullseq(ids, prompt, answer, mask_id=MASK, generator=gen(seed))

    global_state = torch.get_rng_state()
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.p, c.p)


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
def test_runs_on_the_batch_device_with_a_generator_there(device):
    ids, prompt, answer = tiny_batch([(3, 10)] * 3)
    ids = ids.to(device)
    g = torch.Generator(device=device).manual_seed(0)
    out = noise_blockwise(
        ids, prompt.tolist(), answer, torch.tensor([0, 1, -1]), block_size=4, mask_id=MASK, generator=g
    )
    assert isinstance(out, NoisedBatch)
    assert all(t.device.type == device for t in out)
    assert (
        out.noised_ids.dtype == torch.long
        and out.loss_mask.dtype == torch.bool
        and out.p.dtype == torch.float32
    )
    if device != "cpu":
        with pytest.raises(ValueError, match="generator is on cpu"):
            noise_fullseq(ids, prompt, answer, mask_id=MASK, generator=gen())


# ----- the loss -----


def loop_loss(logits, targets, loss_mask, p, weighting, normalize, spans):
    """The straightforward per-sample reference loop."""
    sums, counts = [], []
    for b in range(logits.shape[0]):
        total = torch.zeros((), dtype=torch.float64)
        for t in range(logits.shape[1]):
            if loss_mask[b, t]:
                ce = -torch.log_softmax(logits[b, t].double(), -1)[targets[b, t]]
                total = total + (ce / p[b].double() if weighting == "inv_p" else ce)
        sums.append(total)
        counts.append(int(loss_mask[b].sum()))
    if normalize == "per_sample_masked":
        return sum(s / max(1, n) for s, n in zip(sums, counts)) / len(sums)
    if normalize == "answer_len":
        return sum(s / max(1, int(a)) for s, a in zip(sums, spans)) / len(sums)
    if normalize == "batch_tokens":
        return sum(sums) / max(1, int(spans.sum()))
    return sum(sums) / max(1, sum(counts))


@pytest.fixture
def loss_case():
    g = gen(11)
    batch, seq_len, vocab = 5, 12, 11
    logits = torch.randn(batch, seq_len, vocab, generator=g) * 3
    targets = torch.randint(0, vocab, (batch, seq_len), generator=g)
    loss_mask = torch.rand(batch, seq_len, generator=g) < 0.4
    loss_mask[2] = False  # a sample without loss tokens
    p = torch.rand(batch, generator=g) * 0.9 + 0.05
    spans = torch.tensor([12, 9, 4, 7, 12])
    return logits, targets, loss_mask, p, spans


@pytest.mark.parametrize(
    "weighting,normalize",
    list(
        itertools.product(
            ["none", "inv_p"], ["per_sample_masked", "answer_len", "batch_tokens", "batch_masked"]
        )
    ),
)
def test_loss_equals_per_sample_loop(loss_case, weighting, normalize):
    logits, targets, loss_mask, p, spans = loss_case
    expected = loop_loss(logits, targets, loss_mask, p, weighting, normalize, spans)
    kwargs = dict(p=p, weighting=weighting, normalize=normalize, answer_lens=spans)
    dense = masked_ce_loss(logits, targets, loss_mask, **kwargs)
    sparse = masked_ce_loss(logits[loss_mask], targets, loss_mask, **kwargs)
    assert dense.dtype == torch.float32 and dense.dim() == 0
    torch.testing.assert_close(dense.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sparse, dense)


def test_reference_default_and_zero_token_sample_counted():
    logits = torch.zeros(2, 3, 4)
    logits[0, 0, 1] = 2.0
    targets = torch.tensor([[1, 2, 0], [0, 0, 0]])
    loss_mask = torch.tensor([[True, True, False], [False, False, False]])
    ce0 = -torch.log_softmax(logits[0, 0], -1)[1]
    ce1 = -torch.log_softmax(logits[0, 1], -1)[2]
    # the reference: (mean CE of sample 0 + 0 for sample 1) / 2 samples
    torch.testing.assert_close(masked_ce_loss(logits, targets, loss_mask), (ce0 + ce1) / 2 / 2)


def test_sparse_and_dense_gradients_match(loss_case):
    logits, targets, loss_mask, p, spans = loss_case
    for weighting, normalize in [("none", "per_sample_masked"), ("inv_p", "answer_len")]:
        kwargs = dict(p=p, weighting=weighting, normalize=normalize, answer_lens=spans)
        dense_in = logits.clone().requires_grad_()
        masked_ce_loss(dense_in, targets, loss_mask, **kwargs).backward()
        sparse_in = logits.clone().requires_grad_()
        masked_ce_loss(sparse_in[loss_mask], targets[loss_mask], loss_mask, **kwargs).backward()
        torch.testing.assert_close(sparse_in.grad, dense_in.grad)
        assert dense_in.grad[~loss_mask].abs().sum() == 0


def test_loss_runs_in_float32_for_bf16_logits(loss_case):
    logits, targets, loss_mask, _, _ = loss_case
    half = logits.bfloat16()
    loss = masked_ce_loss(half, targets, loss_mask)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, masked_ce_loss(half.float(), targets, loss_mask))


def test_loss_input_errors(loss_case):
    logits, targets, loss_mask, p, _ = loss_case
    with pytest.raises(ValueError, match="rows but loss_mask selects"):
        masked_ce_loss(logits[loss_mask][:-1], targets, loss_mask)
    with pytest.raises(ValueError, match="needs answer_lens"):
        masked_ce_loss(logits, targets, loss_mask, normalize="answer_len")
    with pytest.raises(ValueError, match="needs the mask rates"):
        masked_ce_loss(logits, targets, loss_mask, weighting="inv_p")
    with pytest.raises(BlocksftError, match="--loss-normalize"):
        masked_ce_loss(logits, targets, loss_mask, normalize="tokens")


def test_supervised_span_lens():
    prompt, answer = torch.tensor([3, 3, 3, 5]), torch.tensor([10, 10, 10, 8])
    assert supervised_span_lens(prompt, answer, seq_len=15).tolist() == [10, 10, 10, 8]
    assert supervised_span_lens(prompt, answer, seq_len=15, supervise_padding=True).tolist() == [
        12,
        12,
        12,
        10,
    ]
    blocks = torch.tensor([0, 2, -1, 1])
    assert supervised_span_lens(prompt, answer, seq_len=15, block_index=blocks, block_size=4).tolist() == [
        4,
        2,
        0,
        4,
    ]


# ----- objectives by name -----


def test_registry_names_and_options():
    assert available_objectives() == ["blockwise", "fullseq", "blockwise_visible_suffix"]
    paper = get_objective("blockwise", mask_id=MASK)
    assert paper.blockwise and paper.options.suffix_mask_prob == 1.0 and paper.options.block_size == 32
    visible = get_objective("blockwise_visible_suffix", mask_id=MASK, block_size=4)
    assert visible.blockwise and visible.options.suffix_mask_prob == 0.0
    assert get_objective("blockwise", mask_id=MASK, suffix_mask_prob=0.5).options.suffix_mask_prob == 0.5
    assert not get_objective("fullseq", mask_id=MASK).blockwise


def test_registry_refuses_options_that_cannot_apply():
    with pytest.raises(BlocksftError, match="unknown --objective 'block'.*blockwise, fullseq"):
        get_objective("block", mask_id=MASK)
    with pytest.raises(BlocksftError, match="--prefix-mask-rate"):
        get_objective("fullseq", mask_id=MASK, prefix_mask_rate=0.2)
    with pytest.raises(BlocksftError, match="fixes --suffix-mask-prob 0.0"):
        get_objective("blockwise_visible_suffix", mask_id=MASK, suffix_mask_prob=1.0)
    with pytest.raises(BlocksftError, match="--block-size"):
        get_objective("blockwise", mask_id=MASK, block_size=0)
    with pytest.raises(BlocksftError, match="--loss-weighting"):
        get_objective("blockwise", mask_id=MASK, loss_weighting="1/p")


def test_objective_noise_and_loss_wire_the_functions(loss_case):
    ids, prompt, answer = tiny_batch([(3, 10)] * 3)
    blocks = torch.tensor([0, 2, -1])
    visible = get_objective("blockwise_visible_suffix", mask_id=MASK, block_size=4, eps=1.0)
    out = visible.noise(ids, prompt, answer, blocks, generator=gen())
    assert pattern(out.noised_ids, out.loss_mask) == ["...LLLL......__", "...........LL__", ".............__"]
    assert visible.block_counts(prompt, answer) == [3, 3, 3]
    with pytest.raises(ValueError, match="needs a block_index"):
        visible.noise(ids, prompt, answer)

    full = get_objective(
        "fullseq", mask_id=MASK, eps=1.0, loss_weighting="inv_p", loss_normalize="answer_len"
    )
    assert full.block_counts(prompt, answer) is None
    noised = full.noise(ids, prompt, answer, blocks, generator=gen())  # block -1: padding row, no loss
    assert noised.loss_mask.sum(1).tolist() == [10, 10, 0]
    logits = torch.randn(3, 15, 7, generator=gen(1))
    targets = ids % 7
    spans = full.span_lens(prompt, answer, seq_len=15, block_index=blocks)
    assert spans.tolist() == [10, 10, 0]
    expected = masked_ce_loss(
        logits,
        targets,
        noised.loss_mask,
        p=noised.p,
        weighting="inv_p",
        normalize="answer_len",
        answer_lens=spans,
    )
    got = full.loss(
        logits[noised.loss_mask], targets, noised, prompt_lens=prompt, answer_lens=answer, block_index=blocks
    )
    torch.testing.assert_close(got, expected)


def test_block_counts_with_supervised_padding_run_to_a_fixed_padded_length_only():
    objective = get_objective("blockwise", mask_id=MASK, block_size=4, supervise_padding=True)
    # Every batch padded to 15 (--pad-to-max-len): the EOS blocks up to 15 are trained too.
    assert objective.block_counts([3, 5], [10, 8], max_len=15) == [3, 3]
    # Padding per batch: its length is unknown when the schedule is planned, so the true answer's.
    assert objective.block_counts([3, 5], [10, 8]) == [3, 2]
    plain = get_objective("blockwise", mask_id=MASK, block_size=4)
    assert plain.block_counts([3, 5], [10, 8], max_len=15) == [3, 2]


# ----- token and FLOP accounting -----


def test_token_counts():
    ids, prompt, answer = tiny_batch([(3, 10), (5, 8), (3, 10)])
    blocks = torch.tensor([0, 1, -1])
    out = noise_blockwise(ids, prompt, answer, blocks, block_size=4, mask_id=MASK, eps=1.0)
    spans = supervised_span_lens(prompt, answer, seq_len=15, block_index=blocks, block_size=4)
    counts = count_tokens(out.loss_mask, prompt, answer, spans)
    assert counts == TokenCounts(
        samples=3, rows_with_loss=2, loss_tokens=8, answer_tokens=8, real_tokens=39, padded_tokens=45
    )
    assert (counts + counts).as_dict()["loss_tokens"] == 16


def test_flop_formulas():
    # 2 FLOPs per weight per token, plus attention 4 * layers * d_model * context per token
    assert forward_flops(1000, 10) == 20_000
    assert forward_flops(1000, 10, n_layers=2, d_model=8, context=5) == 20_000 + 4 * 2 * 8 * 5 * 10
    assert training_step_flops(100) == 300  # all weights trained: the usual 6 N T
    assert training_step_flops(100, trained_forward=4) == 204  # frozen base, LoRA adapters trained
    assert training_step_flops(100, trained_forward=4, recompute=True) == 304


# ----- the benchmark's re-implementation of the reference agrees with ours -----


def test_reference_reimplementation_agrees_where_deterministic():
    ids, prompt, answer = tiny_batch([(3, 10), (5, 8), (2, 1)])
    examples = [
        {"prompt_len": int(p), "full_ids": ids[b, : p + a]} for b, (p, a) in enumerate(zip(prompt, answer))
    ]
    dataset = ReferenceBlockwiseDataset(examples, block_size=4, max_len=15, mask_id=MASK, pad_id=PAD, eps=1.0)
    drawn = {b: set() for b in range(3)}
    for _ in range(4):  # epochs: every block once, then exhausted rows (block -1)
        ref = reference_collate([dataset[b] for b in range(3)])
        ours = noise_blockwise(ids, prompt, answer, ref["blk_index"], block_size=4, mask_id=MASK, eps=1.0)
        assert torch.equal(ref["noisy_ids"], ours.noised_ids) and torch.equal(
            ref["mask_flags"], ours.loss_mask
        )
        assert torch.equal(ref["input_ids"], ids)
        for b, block in enumerate(ref["blk_index"].tolist()):
            assert block == -1 or block not in drawn[b]
            drawn[b].add(block)
    assert drawn == {0: {0, 1, 2, -1}, 1: {0, 1, -1}, 2: {0, -1}} and dataset.remaining == 0
    full = reference_collate(
        [
            ReferenceFullSeqDataset(examples, max_len=15, mask_id=MASK, pad_id=PAD, eps=1.0)[b]
            for b in range(3)
        ]
    )
    ours = noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=1.0)
    assert torch.equal(full["noisy_ids"], ours.noised_ids) and torch.equal(full["mask_flags"], ours.loss_mask)


def test_noise_benchmark_runs(capsys):
    assert main(["--batch-size", "4", "--max-len", "64", "--block-size", "8", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "noise only" in out and out.count("x, ") == 6


def test_trainer_step_flow_with_the_tiny_model(tiny_model, tokenizer):
    """records -> block counts -> schedule -> padded batch -> noise -> logits_at -> loss -> counts."""

    vocab = tiny_model.config.vocab_size
    g = gen(3)
    records = [
        {"prompt_len": plen, "full_ids": torch.randint(6, vocab, (plen + alen,), generator=g)}
        for plen, alen in [(5, 9), (7, 3), (4, 12)]
    ]
    objective = get_objective("blockwise", mask_id=mask_token_id(tokenizer), block_size=4)
    prompt = torch.tensor([r["prompt_len"] for r in records])
    answer = torch.tensor([len(r["full_ids"]) for r in records]) - prompt
    schedule = BlockSchedule(objective.block_counts(prompt, answer), seed=0)
    samples, blocks = schedule.plan(0)  # the first epoch: each of the 3 samples once
    rows = [records[i]["full_ids"] for i in samples]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=1)
    prompt, answer = prompt[samples], answer[samples]
    noised = objective.noise(input_ids, prompt, answer, blocks, generator=gen(4))
    assert noised.loss_mask.any()

    def step(sparse):
        tiny_model.zero_grad()
        if sparse:
            logits = tiny_model(noised.noised_ids, logits_at=noised.loss_mask).logits  # [N, V]
        else:
            logits = tiny_model(noised.noised_ids).logits  # [B, L, V]
        loss = objective.loss(
            logits, input_ids, noised, prompt_lens=prompt, answer_lens=answer, block_index=blocks
        )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]

    dense_loss, dense_grads = step(sparse=False)
    sparse_loss, sparse_grads = step(sparse=True)
    torch.testing.assert_close(sparse_loss, dense_loss)
    assert len(sparse_grads) == len(dense_grads)
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b)

    spans = objective.span_lens(prompt, answer, seq_len=input_ids.shape[1], block_index=blocks)
    counts = count_tokens(noised.loss_mask, prompt, answer, spans)
    assert counts.loss_tokens == int(noised.loss_mask.sum()) and counts.real_tokens == sum(map(len, rows))
    assert counts.padded_tokens == input_ids.numel() and counts.answer_tokens == int(spans.sum())


@pytest.mark.parametrize("eps,accepted", [(1.0, True), (1e-3, True), (0.0, False), (1.5, False)])
def test_mask_eps_has_one_range_for_the_config_the_options_and_the_noise(eps, accepted):
    ids, prompt, answer = tiny_batch([(3, 10)])
    builds = (
        lambda: TrainConfig(mask_eps=eps),
        lambda: ObjectiveOptions(mask_id=MASK, eps=eps),
        lambda: noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=eps, generator=gen(0)),
    )
    for build in builds:
        if accepted:
            build()
        else:
            with pytest.raises(ValueError, match=r"mask.eps must be in \(0, 1\]"):
                build()
    if eps == 1.0:  # every answer token masked: p ~ U(1, 1)
        noised = noise_fullseq(ids, prompt, answer, mask_id=MASK, eps=eps, generator=gen(0))
        assert noised.loss_mask[0, 3:13].all() and not noised.loss_mask[0, :3].any()


def test_warmup_ratio_is_refused_at_one_when_the_config_is_built():
    assert TrainConfig(warmup_ratio=0.99).warmup_ratio == 0.99
    with pytest.raises(ValueError, match=r"warmup_ratio must be in \[0, 1\), got 1.0"):
        TrainConfig(warmup_ratio=1.0)
