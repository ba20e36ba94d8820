"""Configuration plumbing: dataclass defaults < YAML < flags, both flag spellings, clear errors."""

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.errors import BlocksftError


@dataclass
class ExampleConfig:
    max_len: int = field(default=256, metadata={"help": "longest sequence"})
    objective: Literal["blockwise", "fullseq"] = "blockwise"
    lr: float = 1e-5
    resume: bool = False
    model: str | None = None
    targets: list[str] = field(default_factory=lambda: ["q_proj"])

    def __post_init__(self):
        if self.max_len <= 0:
            raise ValueError(f"max_len must be positive, got {self.max_len}")


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_dataclass_arguments(parser, ExampleConfig)
    args = parser.parse_args(argv)
    return build_config(ExampleConfig, args, args.config)


def test_defaults_when_nothing_given():
    assert parse([]) == ExampleConfig()


def test_both_flag_spellings_and_types():
    cfg = parse(["--max_len", "128", "--lr", "3e-4", "--resume", "--model", "none", "--targets", "a", "b"])
    assert cfg == ExampleConfig(max_len=128, lr=3e-4, resume=True, model=None, targets=["a", "b"])
    assert parse(["--max-len", "64", "--no-resume"]).max_len == 64


def test_yaml_under_flags(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max-len: 100\nobjective: fullseq\nlr: 0.5\n")
    cfg = parse(["--config", str(recipe), "--lr", "0.25"])
    assert (cfg.max_len, cfg.objective, cfg.lr) == (100, "fullseq", 0.25)


def test_unknown_yaml_key_and_bad_values_are_clear_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_lenn: 100\n")
    with pytest.raises(BlocksftError, match="unknown keys \\['max_lenn'\\]"):
        parse(["--config", str(recipe)])
    with pytest.raises(BlocksftError, match="max_len must be positive"):
        parse(["--max-len", "0"])
    with pytest.raises(SystemExit):
        parse(["--objective", "nope"])
    with pytest.raises(BlocksftError, match="does not exist"):
        parse(["--config", str(tmp_path / "missing.yaml")])
