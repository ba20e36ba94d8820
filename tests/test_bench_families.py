"""The benchmarks with either model family (``--family``): the random model built is the family's,
the published shape is LLaDA-8B's or Dream-7B's, and every bench runs and checks itself on Dream."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_fast_paths import run_bench_script

from blocksft.bench import eval as eval_bench
from blocksft.bench import generate as generate_bench
from blocksft.bench import train as train_bench
from blocksft.families import family_named
from blocksft.families.base import ModelShape
from blocksft.families.dream import DREAM
from blocksft.families.llada import LLADA
from blocksft.reference import reference_loss


def tiny_random(family, **options):
    shape = generate_bench.bench_shape(family, tiny=True, published=False)
    return generate_bench.random_model(family, shape, device="cpu", dtype=torch.float32, seed=0, **options)


def test_random_models_are_the_familys_own_with_norms_one_and_biases_zero():
    dream = tiny_random(DREAM)
    assert dream.config.model_type == "Dream" and dream.config.num_key_value_heads == 2
    assert dream.config.mask_token_id == 3 and dream.config.pad_token_id == 0  # the tiny tokenizer's
    params = dict(dream.named_parameters())
    assert torch.equal(params["model.layers.0.self_attn.q_proj.bias"], torch.zeros(64))
    assert torch.equal(params["model.norm.weight"], torch.ones(64))
    assert 0.015 < float(params["model.layers.0.mlp.up_proj.weight"].detach().std()) < 0.025
    llada = tiny_random(LLADA)
    assert llada.config.model_type == "llada" and llada.config.n_kv_heads == 4
    assert llada.config.mask_token_id == 2 and llada.config.embedding_size == 512


def test_the_published_shape_is_llada_8b_or_dream_7b():
    for family in (LLADA, DREAM):
        assert generate_bench.bench_shape(family, tiny=False, published=True) is None
    dream = DREAM.config_class()  # what random_model builds for the published shape
    assert DREAM.shape(dream) == ModelShape(
        n_layers=28, d_model=3584, n_heads=28, n_kv_heads=4, mlp_hidden=18944, vocab_rows=152064
    )
    assert dream.rope_theta == 1e6 and dream.mask_token_id == 151666
    assert LLADA.shape(LLADA.config_class()) == ModelShape(
        n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, mlp_hidden=12288, vocab_rows=126464
    )
    small = generate_bench.bench_shape(DREAM, tiny=False, published=False)
    assert small.n_kv_heads == 2 and small.n_heads == 4  # grouped-query attention kept


@pytest.mark.parametrize("family", [LLADA, DREAM], ids=lambda f: f.name)
def test_sharpen_scales_the_lm_head_to_the_logit_spread(family):
    model = tiny_random(family, init_std=0.1)
    prompt = torch.arange(6, 22)[None]
    generate_bench.sharpen(model, prompt, 16, 10.0)
    canvas = torch.cat([prompt, torch.full((1, 16), model.config.mask_token_id)], 1)
    with torch.no_grad():
        assert float(model(canvas).logits.std()) == pytest.approx(10.0, rel=1e-4)


def test_generate_bench_on_dream_decodes_with_the_fixed_shape_steps_as_the_loop():
    lines = []
    argv = ["--tiny", "--family", "dream", "--gen-length", "16", "--block-length", "8"]
    argv += ["--modes", "plain", "dual", "threshold", "--decode", "loop", "static", "--models", "confident"]
    result = generate_bench.benchmark(argv, on_row=lines.append)
    assert "random Dream (2 layers, d_model 64, 4 heads, 2 key/value heads, vocab 512)" in lines[0]
    rows = {(r["mode"], r["decode"]): r for r in result["rows"]}
    assert len(rows) == 6 and rows[("plain", "loop")]["speed_up"] == 1.0
    for mode in ("plain", "dual", "threshold 0.9"):
        loop, static = rows[(mode, "loop")], rows[(mode, "static")]
        assert static["nfe"] == loop["nfe"] and static["agree"] == loop["agree"]  # the same tokens
    assert rows[("plain", "static")]["agree"] == 1.0 and rows[("plain", "loop")]["nfe"] == 16
    assert rows[("threshold 0.9", "loop")]["nfe"] < 16  # the confident model crosses the threshold


def test_eval_bench_on_dream_renders_prompts_in_chatml(tmp_path):
    data = tmp_path / "test.jsonl"
    row = {"question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "#### 5"}
    data.write_text(json.dumps(row) + "\n")
    for family, first in (("llada", "bos_token_id"), ("dream", None)):
        args = eval_bench.parse_args(["--tiny", "--family", family, "--problems", "1", "--data", str(data)])
        (prompt,), _ = eval_bench.gsm8k_prompts(args, vocab=512)
        spec = family_named(family).tokenizer_spec
        # LLaDA's template opens with BOS; Dream's with "<|im_start|>" (its default system turn).
        expected = spec.token_id(spec.bos or spec.eos) if first else spec.token_id("<|im_start|>")
        assert prompt[0] == expected
    argv = ["--tiny", "--family", "dream", "--problems", "2", "--gen-length", "16", "--block-length", "8"]
    argv += ["--data", str(data), "--default-batch", "1", "--fast-batch", "2", "--decode", "static"]
    result = eval_bench.benchmark(argv)
    assert "random 'confident' Dream" in result["description"]
    default, fast = result["rows"]
    assert default["mean_nfe_per_problem"] == 16 and fast["sampler"]["cache"] == "dual"
    assert fast["mean_nfe_per_problem"] <= 16


def test_train_bench_on_dream_gives_the_reference_loss_on_realigned_logits(capsys):
    argv = ["--tiny", "--family", "dream", "--micro-batch", "4", "--max-len", "64", "--steps", "1"]
    argv += ["--warmup", "0", "--lora-r", "4"]
    paths = ["reference", "ours", "paper", "full-logits", "chunked-ce"]
    result = train_bench.benchmark([*argv, "--paths", *paths])
    assert result["family"] == "Dream" and result["shape"]["n_kv_heads"] == 2
    assert "random Dream {'n_layers': 2" in train_bench.format_report(result)
    assert [c["path"] for c in result["checks"]] == paths[1:] and all(c["same"] for c in result["checks"])
    assert train_bench.main([*argv, "--paths", "reference", "ours"]) == 0
    assert "-> same" in capsys.readouterr().out


def test_the_reference_loss_reads_a_shifted_models_prediction_one_position_earlier():
    model = tiny_random(DREAM, init_std=0.1)
    ids = torch.arange(6, 18)[None]
    flags = torch.zeros_like(ids, dtype=torch.bool)
    flags[0, 7:10] = True
    noisy = ids.masked_fill(flags, model.config.mask_token_id)
    with torch.no_grad():
        raw = model(input_ids=noisy).logits[0]
        loss = reference_loss(model, noisy, ids, flags)
    by_hand = F.cross_entropy(raw[6:9], ids[0, 7:10])  # the outputs at 6..8 predict tokens 7..9
    unaligned = F.cross_entropy(raw[7:10], ids[0, 7:10])
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-6)
    assert abs(float(loss) - float(unaligned)) > 1e-3


def test_gpu_check_script_runs_on_cpu_for_dream(tmp_path):
    run_bench_script("gpu_check.py", tmp_path, "--tiny", "--family", "dream", "--only", "train", "decode")
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["family"] == "dream" and set(result) >= {"train", "decode"}
    assert result["train"]["family"] == "Dream" and all(c["same"] for c in result["train"]["checks"])
    rows = result["decode"]["rows"]
    for mode in ("plain", "threshold 0.9"):
        loop, graph = (
            next(r for r in rows if (r["mode"], r["decode"]) == (mode, d)) for d in ("loop", "graph")
        )
        assert graph["nfe"] == loop["nfe"] and graph["agree"] == loop["agree"]
