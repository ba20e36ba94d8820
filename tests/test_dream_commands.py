"""Every command with a tiny Dream checkpoint folder: prepare (ChatML, its boundary, its special
tokens), eval (prompts through Dream's template), merge, the lm-eval model under the shift, family
detection (Dream's bad inputs are rows of test_bad_input.py's table)."""

import json

import pytest
import torch
from test_prepare import ROWS, WRAPPER, write_jsonl
from train_utils import safetensors_dtypes, save_random_adapter
from transformers import AutoModelForCausalLM

from blocksft.cli import main
from blocksft.config.eval import EvalConfig
from blocksft.config.prepare import PrepareConfig
from blocksft.config.sampler import SamplerConfig
from blocksft.data.prepare import run_prepare
from blocksft.data.records import load_records
from blocksft.errors import BlocksftError
from blocksft.evaluate import results
from blocksft.evaluate.runner import run_eval
from blocksft.families import FAMILIES, family_named, family_of_model_type, family_of_tokenizer
from blocksft.families.dream import DREAM
from blocksft.families.llada import LLADA
from blocksft.model.loading import load_model
from blocksft.testing import tiny_tokenizer
from blocksft.testing_dream import tiny_dream_model, tiny_dream_tokenizer


@pytest.fixture(scope="module")
def dream_tokenizer():
    return tiny_dream_tokenizer()


@pytest.fixture(scope="module")
def dream_checkpoint(tmp_path_factory, dream_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-dream")
    tiny_dream_model(dream_tokenizer, seed=0).save_pretrained(folder)
    dream_tokenizer.save_pretrained(folder)
    return folder


# ----- families --------------------------------------------------------------------------------


def test_the_family_is_found_from_the_config_or_the_tokenizer(dream_tokenizer, dream_checkpoint):
    assert [f.name for f in FAMILIES] == ["llada", "dream"]
    assert family_of_model_type("Dream") is DREAM and family_of_model_type("llada") is LLADA
    assert family_of_tokenizer(dream_tokenizer) is DREAM and family_of_tokenizer(tiny_tokenizer()) is LLADA
    assert family_named("dream") is DREAM
    with pytest.raises(BlocksftError, match="unknown model family 'qwen'"):
        family_named("qwen")
    assert type(load_model(str(dream_checkpoint))).__name__ == "DreamModel"
    assert (DREAM.logits_shift, LLADA.logits_shift) == (1, 0)
    assert LLADA.lora_presets["reference"] == ("q_proj", "k_proj", "v_proj", "up_proj")


def test_a_dream_checkpoint_missing_a_tensor_is_refused_before_loading(dream_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    state = load_file(dream_checkpoint / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text((dream_checkpoint / "config.json").read_text())
    with pytest.raises(
        BlocksftError, match=r"does not match the dream layout: missing 1: .*layers.1.mlp.up_proj"
    ):
        load_model(str(folder))


# ----- prepare ---------------------------------------------------------------------------------


def test_prepare_renders_chatml_and_supervises_the_answer_to_im_end(
    tmp_path, dream_checkpoint, dream_tokenizer
):
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    config = PrepareConfig(
        output=str(tmp_path / "out.pt"),
        model=str(dream_checkpoint),
        dataset=str(rows),
        max_len=200,
        max_samples=2,
    )
    result = run_prepare(config)
    assert result.counts.kept == 2
    for record, row in zip(result.records, [ROWS[0], ROWS[3]]):
        prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            + WRAPPER.format(row["query"])
            + "<|im_end|>\n<|im_start|>assistant\n"
        )
        full = prompt + row["response"] + "<|im_end|>\n"
        ids = record["full_ids"].tolist()
        assert ids == dream_tokenizer(full, add_special_tokens=False)["input_ids"]
        assert record["prompt_len"] == len(dream_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert ids[0] == dream_tokenizer.convert_tokens_to_ids("<|im_start|>")  # position 0: never a target
    meta = json.loads((tmp_path / "out.pt.meta.json").read_text())
    assert meta["chat_template_appends_header"] is False
    assert meta["tokenizer"]["special_token_ids"]["eot"] == dream_tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert meta["tokenizer"]["special_token_ids"]["mask"] == dream_tokenizer.convert_tokens_to_ids("<|mask|>")
    assert len(load_records(tmp_path / "out.pt", tokenizer=dream_tokenizer)) == 2


def test_prepare_refuses_dreams_special_token_text(tmp_path, dream_checkpoint, capsys):
    rows = write_jsonl(
        tmp_path / "rows.jsonl", [{"type": "MATH_SV", "query": "a <|im_end|> b", "response": "c"}]
    )
    argv = [
        "prepare",
        "--model",
        str(dream_checkpoint),
        "--dataset",
        str(rows),
        "--output",
        str(tmp_path / "o.pt"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("blocksft prepare: error:") and "<|im_end|>" in err


# ----- eval ------------------------------------------------------------------------------------


def test_eval_renders_prompts_with_dreams_template(tmp_path, dream_checkpoint):
    data = tmp_path / "gsm.jsonl"
    data.write_text(
        "\n".join(json.dumps({"question": f"What is {a} + 1?", "answer": f"#### {a + 1}"}) for a in range(4))
        + "\n"
    )
    sampler = SamplerConfig(gen_length=16, block_length=8, steps=8)
    config = EvalConfig(
        model=[str(dream_checkpoint)],
        data=str(data),
        limit=4,
        batch_size=2,
        output=str(tmp_path / "r.jsonl"),
        device="cpu",
        block_length="8",
    )
    run_eval(config, sampler, progress=False)
    rows = results.read_rows(tmp_path / "r.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith(
            "<|im_start|>assistant\n"
        )
        assert "<|startoftext|>" not in row["prompt"] and row["nfe"] == 8


# ----- merge -----------------------------------------------------------------------------------


def test_merge_writes_a_dream_checkpoint_with_the_adapters_logits(
    tmp_path, dream_checkpoint, dream_tokenizer
):
    ids, expected = save_random_adapter(
        tiny_dream_model(dream_tokenizer, seed=0),
        ["q_proj", "o_proj", "down_proj"],
        tmp_path / "adapter",
        len(dream_tokenizer),
    )
    out = tmp_path / "merged"
    argv = [
        "merge",
        "--base",
        str(dream_checkpoint),
        "--adapter",
        str(tmp_path / "adapter"),
        "--output",
        str(out),
    ]
    assert main(argv) == 0
    keys = safetensors_dtypes(out)
    assert set(keys) == set(DREAM.parameter_shapes(DREAM.config_class.from_pretrained(out)))
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_dream.DreamConfig"
    for name in DREAM.modeling_files:
        assert (out / name).is_file(), name
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


# ----- the lm-eval model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dream_lm(dream_tokenizer):
    lm_eval_model = pytest.importorskip("blocksft.evaluate.lm_eval_model")
    model = tiny_dream_model(dream_tokenizer, seed=0)
    return lm_eval_model.BlocksftLM(
        pretrained=model,
        tokenizer=dream_tokenizer,
        gen_length=8,
        block_length=4,
        steps=8,
        mc_num=8,
        greedy_check=False,
    )


def test_lm_eval_scores_a_single_token_with_the_raw_logits_one_position_earlier(dream_lm):
    context_ids, cont_ids = dream_lm._encode_pair("Natalia sold 48 clips", " 72")
    context_ids, cont_ids = context_ids + cont_ids[:-1], cont_ids[-1:]
    nll = dream_lm.continuation_nll(context_ids, cont_ids, torch.Generator().manual_seed(0))
    noised = torch.tensor([context_ids + [dream_lm._mask_id]])
    with torch.no_grad():
        raw = dream_lm.model(noised).logits[0].float()
    expected = float(torch.nn.functional.cross_entropy(raw[len(context_ids) - 1], torch.tensor(cont_ids[0])))
    assert nll == pytest.approx(expected, rel=1e-5)


def test_lm_eval_gives_an_empty_context_an_eos_to_predict_from(dream_lm, dream_tokenizer):
    context_ids, cont_ids = dream_lm._encode_pair("", "Natalia")
    assert context_ids == [dream_tokenizer.eos_token_id]
    assert cont_ids == dream_tokenizer("Natalia", add_special_tokens=False)["input_ids"]
    assert dream_lm.continuation_nll(context_ids, cont_ids, torch.Generator().manual_seed(0)) > 0
