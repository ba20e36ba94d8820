"""The lm-evaluation-harness model class `blocksft` on the tiny random model (CPU, no download)."""

import itertools
import json

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager

from blocksft.errors import BlocksftError
from blocksft.evaluate.lm_eval_model import BlocksftLM, cut_at_strings  # noqa: E402
from blocksft.generation.sampler import generate
from blocksft.testing import tiny_llada_model


@pytest.fixture(scope="module")
def lm(tokenizer):
    model = tiny_llada_model(tokenizer, seed=0)
    return BlocksftLM(
        pretrained=model,
        tokenizer=tokenizer,
        gen_length=8,
        block_length=4,
        steps=8,
        mc_num=64,
        mc_batch_size=32,
        greedy_check=False,
    )


def request(kind, args, idx=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx, metadata=("tiny", idx, 1))


def masked_ce(lm, ids, masked_positions, targets):
    """Sum of the cross-entropies at ``masked_positions`` with those positions masked (one forward)."""
    noised = torch.tensor([ids])
    noised[0, list(masked_positions)] = lm._mask_id
    with torch.no_grad():
        logits = lm.model(noised).logits[0].float()
    return sum(
        float(torch.nn.functional.cross_entropy(logits[p], torch.tensor(t)))
        for p, t in zip(masked_positions, targets)
    )


def test_single_token_continuation_is_exact(lm):
    context_ids, cont_ids = lm._encode_pair("Natalia sold 48 clips", " 72")
    assert len(cont_ids) >= 1
    context_ids, cont_ids = context_ids + cont_ids[:-1], cont_ids[-1:]
    nll = lm.continuation_nll(context_ids, cont_ids, torch.Generator().manual_seed(0))
    expected = masked_ce(lm, context_ids + cont_ids, [len(context_ids)], cont_ids)
    assert nll == pytest.approx(expected, rel=1e-5)


def test_monte_carlo_estimate_matches_the_enumerated_bound(lm):
    context_ids = lm._encode("Q: how many clips? A:")
    cont_ids = [int(t) for t in lm.tokenizer(" 48 + 24", add_special_tokens=False)["input_ids"][:3]]
    length, start = len(cont_ids), len(context_ids)
    # E_k~U{1..L} [ (L / k) * E_{S, |S|=k} sum_{i in S} CE_i(S masked) ], every subset enumerated
    exact = 0.0
    for k in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), k))
        mean = sum(
            masked_ce(lm, context_ids + cont_ids, [start + i for i in s], [cont_ids[i] for i in s])
            for s in subsets
        ) / len(subsets)
        exact += (length / k) * mean / length
    estimate = lm.continuation_nll(context_ids, cont_ids, torch.Generator().manual_seed(1))
    assert estimate == pytest.approx(exact, rel=0.02)
    again = lm.continuation_nll(context_ids, cont_ids, torch.Generator().manual_seed(1))
    assert again == estimate


def test_loglikelihood_requests(lm):
    out = lm.loglikelihood(
        [request("loglikelihood", ("2 + 2 =", " 4")), request("loglikelihood", ("2 + 2 =", " 5"), 1)]
    )
    assert len(out) == 2
    for ll, greedy in out:
        assert isinstance(ll, float) and ll < 0 and greedy is False


def test_is_greedy_recognises_the_greedy_continuation(tokenizer, lm):
    checker = BlocksftLM(pretrained=lm.model, tokenizer=tokenizer, mc_num=2, greedy_check=True)
    context = "Natalia sold"
    context_ids = checker._encode(context)
    out = generate(
        lm.model, torch.tensor([context_ids]), gen_length=3, block_length=3, steps=3, mask_id=lm._mask_id
    )
    greedy_ids = out.sequences[0, len(context_ids) :].tolist()
    assert checker._is_greedy(context_ids, greedy_ids)
    other = [(greedy_ids[0] + 1) % len(tokenizer)] + greedy_ids[1:]
    assert not checker._is_greedy(context_ids, other)


def test_generate_until_cuts_at_stop_strings(lm):
    texts = lm.generate_until(
        [request("generate_until", ("Q: 1+1?\nA:", {"until": ["\n"]}), i) for i in range(3)]
    )
    assert len(texts) == 3 and all(isinstance(t, str) and "\n" not in t for t in texts)
    assert texts[0] == texts[1] == texts[2]  # the same prompt decodes the same way (temperature 0)
    assert cut_at_strings("a b\nc Q: d", ["Q:", "\n"]) == "a b"
    assert cut_at_strings("abc", None) == "abc"


def test_the_confidence_mode_is_a_model_arg(lm):
    assert lm.sampler.confidence == "float64"
    exact = BlocksftLM(pretrained=lm.model, tokenizer=lm.tokenizer, confidence="llada", greedy_check=False)
    assert exact.sampler.confidence == "llada"
    with pytest.raises(BlocksftError, match="confidence"):
        BlocksftLM(pretrained=lm.model, tokenizer=lm.tokenizer, confidence="float16")


def test_loglikelihood_rolling_is_not_implemented(lm):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([request("loglikelihood_rolling", ("text",))])


def test_one_bos_with_and_without_chat_template(lm):
    bos = lm.tokenizer.bos_token_id
    templated = lm.apply_chat_template([{"role": "user", "content": "hi"}])
    for text in ("plain text", templated):
        ids = lm._encode(text)
        assert ids[0] == bos and ids[1] != bos


def write_tiny_tasks(folder):
    """Two harness tasks over a local two-row JSONL: one generate_until, one multiple_choice."""
    data = folder / "data.jsonl"
    rows = [("1+1?", "2"), ("2+2?", "4")]
    data.write_text(
        "".join(json.dumps({"question": q, "answer": a, "choices": [a, "9"]}) + "\n" for q, a in rows)
    )
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "gen.yaml").write_text(
        "task: blocksft_tiny_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\nmetric_list:\n  - metric: exact_match\n'
        "    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "mc.yaml").write_text(
        "task: blocksft_tiny_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: 0\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n"
    )


def test_simple_evaluate_with_a_tiny_task(tiny_checkpoint, tmp_path):
    write_tiny_tasks(tmp_path)
    out = lm_eval.simple_evaluate(
        model="blocksft",
        model_args=f"pretrained={tiny_checkpoint},gen_length=8,block_length=8,steps=8,mc_num=4",
        device="cpu",
        tasks=["blocksft_tiny_gen", "blocksft_tiny_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    assert set(out["results"]) == {"blocksft_tiny_gen", "blocksft_tiny_mc"}
    assert 0.0 <= out["results"]["blocksft_tiny_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= out["results"]["blocksft_tiny_mc"]["acc,none"] <= 1.0
