"""`blocksft merge` and the checkpoints it writes: merged weights, no LoRA keys, loadable anywhere."""

import json

import pytest
import torch
from train_utils import load_without_blocksft, safetensors_dtypes, save_random_adapter
from transformers import AutoModelForCausalLM

from blocksft.cli import main
from blocksft.testing import tiny_llada_model


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("merge")
    base = tiny_llada_model(tokenizer, seed=0)
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    targets = ["q_proj", "v_proj", "ff_proj"]
    ids, expected = save_random_adapter(
        tiny_llada_model(tokenizer, seed=0), targets, folder / "adapter", len(tokenizer)
    )
    return folder, ids, expected


def test_merge_writes_a_checkpoint_with_the_adapters_logits(base_and_adapter):
    folder, ids, expected = base_and_adapter
    out = folder / "merged"
    assert (
        main(
            [
                "merge",
                "--base",
                str(folder / "base"),
                "--adapter",
                str(folder / "adapter"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    dtypes = safetensors_dtypes(out)
    assert set(dtypes.values()) == {"F32"}  # auto: the base checkpoint's dtype
    assert not any("lora_" in k or "base_layer" in k for k in dtypes)
    assert "model.transformer.blocks.0.q_proj.weight" in dtypes
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert config["auto_map"]["AutoConfig"] == "configuration_llada.LLaDAConfig"
    assert (out / "modeling_llada.py").is_file() and (out / "configuration_llada.py").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_merged_checkpoint_loads_with_plain_transformers_and_remote_code(base_and_adapter, tmp_path):
    folder, ids, expected = base_and_adapter
    out = folder / "merged_bf16"
    assert (
        main(
            ["merge", "--base", str(folder / "base"), "--adapter", str(folder / "adapter")]
            + ["--output", str(out), "--dtype", "bf16"]
        )
        == 0
    )
    assert set(safetensors_dtypes(out).values()) == {"BF16"}
    result = load_without_blocksft(out, ids, tmp_path)
    assert not result["blocksft_loaded"] and result["module"].startswith("transformers_modules.")
    assert result["dtype"] == "torch.bfloat16"
    torch.testing.assert_close(result["logits"].float(), expected, rtol=0.05, atol=0.05)


def test_merge_refuses_an_existing_output_and_a_folder_that_is_no_adapter(base_and_adapter, capsys):
    folder, _, _ = base_and_adapter
    (folder / "taken").mkdir(exist_ok=True)
    base = ["merge", "--base", str(folder / "base")]
    assert main([*base, "--adapter", str(folder / "adapter"), "--output", str(folder / "taken")]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main([*base, "--adapter", str(folder / "base"), "--output", str(folder / "new")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert not (folder / "new").exists()
