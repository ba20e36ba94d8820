"""The command line: every subcommand exists and bad input ends in one clear line."""

import subprocess
import sys

import pytest

from blocksft.cli import COMMANDS, build_parser, main


def test_every_subcommand_is_registered():
    assert set(COMMANDS) == {"prepare", "train", "generate", "eval", "merge", "demo", "bench", "plot"}
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_module_entry_point_prints_version():
    out = subprocess.run(
        [sys.executable, "-m", "blocksft", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("blocksft ")


def test_missing_subcommand_is_an_error():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code != 0


def test_building_the_parser_imports_no_torch():
    """The rule of docs/ARCHITECTURE.md: `blocksft --help` and a bad flag answer without torch."""
    code = (
        "import sys; from blocksft.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('blocksft.demo.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['blocksft.demo.config', 'blocksft.demo.task']"
