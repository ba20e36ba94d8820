"""The demo's published numbers, regenerated from runs: ``blocksft bench demo``.

Runs ``blocksft demo`` for several seeds one after the other (each in its own process, as a user
runs it), or reads finished output folders, and rewrites the README's part between
``<!-- demo-results:begin -->`` and ``<!-- demo-results:end -->``: the seed-0 table the default
command prints, the mean and range of every cell over the seeds, how often the verdict holds, the
equal-tokens run, the stage times, and the versions, threads, CPU and code revision they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from blocksft.demo.config import DemoConfig
from blocksft.demo.provenance import describe_environment
from blocksft.demo.report import SIGNIFICANCE, block_table, percent_with_interval
from blocksft.errors import BlocksftError

BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"
MODELS = ("base", "blockwise", "fullseq")
STAGES = {
    "pretrain": "pretraining",
    "sft blockwise": "Blockwise SFT",
    "sft fullseq": "full-sequence SFT",
    "eval": "evaluation",
}
# Settings that may differ between the runs of one table; any other difference is an error.
PER_RUN = ("seed", "out", "overwrite")


def load_run(folder: Path) -> dict:
    """A finished demo's ``demo.json``, with block lengths as integers again."""
    path = Path(folder) / "demo.json"
    if not path.exists():
        raise BlocksftError(f"{folder}: no demo.json (not a finished `blocksft demo` output folder)")
    run = json.loads(path.read_text())
    if "results" not in run or "environment" not in run:
        raise BlocksftError(f"{path}: written by an older blocksft demo (no results or environment)")
    results = run["results"]
    results["accuracy"] = {
        name: {int(b): cell for b, cell in by_block.items()} for name, by_block in results["accuracy"].items()
    }
    results["paired"] = {int(b): test for b, test in results["paired"].items()}
    return run


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))


def check_comparable(runs: list[dict], *, same_settings: bool = True) -> None:
    """Runs summarised together must share versions, threads, CPU and code revision, and, with
    ``same_settings``, every setting but the seed."""

    def environment(run: dict) -> dict:
        return {k: v for k, v in run["environment"].items() if k != "load_average_at_start"}

    def settings(run: dict) -> dict:
        return {k: v for k, v in run["settings"].items() if k not in PER_RUN}

    for run in runs[1:]:
        diff = [f"environment.{k}" for k in _differences(environment(runs[0]), environment(run))]
        if same_settings:
            diff += [f"settings.{k}" for k in _differences(settings(runs[0]), settings(run))]
        if diff:
            raise BlocksftError(
                f"the run of seed {run['seed']} differs from that of seed {runs[0]['seed']} in "
                f"{', '.join(diff)}: summarise runs of one setting, code revision and machine"
            )


def spread(values: list[float]) -> dict:
    """Mean, smallest and largest of ``values``."""
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def cell_spread(runs: list[dict], metric: str = "strict") -> dict[str, dict[int, dict]]:
    """``{model: {block: spread of accuracy (%) over the runs}}`` for the cells every run has."""
    table: dict[str, dict[int, dict]] = {}
    first = runs[0]["results"]["accuracy"]
    for name, by_block in first.items():
        for block in by_block:
            values = [100 * run["results"]["accuracy"][name][block][metric]["accuracy"] for run in runs]
            table.setdefault(name, {})[block] = spread(values)
    return table


def verdict_tally(runs: list[dict]) -> dict:
    """At the training block size: how often each SFT won, how often significantly, and the
    spread of full-sequence minus Blockwise accuracy (points)."""
    block = runs[0]["results"]["training_block"]
    tests = [run["results"]["paired"].get(block) for run in runs]
    if any(t is None for t in tests):
        return {"block": block, "runs": len(runs), "available": False}
    diffs = [100 * (t["accuracy_b"] - t["accuracy_a"]) for t in tests]
    return {
        "block": block,
        "runs": len(runs),
        "available": True,
        "fullseq_wins": sum(d > 0 for d in diffs),
        "blockwise_wins": sum(d < 0 for d in diffs),
        "fullseq_significant": sum(d > 0 and t["p"] < SIGNIFICANCE for d, t in zip(diffs, tests)),
        "blockwise_significant": sum(d < 0 and t["p"] < SIGNIFICANCE for d, t in zip(diffs, tests)),
        "difference": spread(diffs),
    }


def leaders_by_block(runs: list[dict]) -> dict[int, dict[str, int]]:
    """At every inference block length, in how many runs each SFT was ahead (ties counted apart)."""
    out: dict[int, dict[str, int]] = {}
    for block in sorted(runs[0]["results"]["paired"]):
        counts = {"fullseq": 0, "blockwise": 0, "tie": 0}
        for run in runs:
            t = run["results"]["paired"][block]
            lead = t["accuracy_b"] - t["accuracy_a"]
            counts["fullseq" if lead > 0 else "blockwise" if lead < 0 else "tie"] += 1
        out[block] = counts
    return out


# ----- Markdown -----------------------------------------------------------------------------------


def _column(block: int, training: bool) -> str:
    return f"**block {block}** (training)" if training else f"block {block}"


def accuracy_rows(run: dict, metric: str = "strict") -> list[str]:
    """One run's table: accuracy [95 % Wilson interval] in % per model and block length."""
    accuracy = run["results"]["accuracy"]
    cells = {
        name: {
            b: percent_with_interval(by_block[metric])
            for b, by_block in accuracy[name].items()
            if metric in by_block
        }
        for name in MODELS
        if name in accuracy
    }
    return block_table(cells, run["results"]["training_block"], _column)


def spread_rows(runs: list[dict]) -> list[str]:
    """Mean [smallest, largest] accuracy in % per model and block length over the runs."""
    table = cell_spread(runs)
    cells = {
        name: {b: f"{s['mean']:.1f} [{s['min']:.1f}, {s['max']:.1f}]" for b, s in table[name].items()}
        for name in MODELS
        if name in table
    }
    return block_table(cells, runs[0]["results"]["training_block"], _column)


def tally_sentence(runs: list[dict]) -> str:
    tally = verdict_tally(runs)
    n, block = tally["runs"], tally["block"]
    if not tally["available"]:
        return f"The training block size {block} was not evaluated, so no verdict is tallied."
    d = tally["difference"]
    leads = leaders_by_block(runs)
    ahead = ", ".join(
        f"{b}: {c['fullseq']}/{c['blockwise']}" + (f" ({c['tie']} tied)" if c["tie"] else "")
        for b, c in leads.items()
    )
    return (
        f"At the training block size {block}, full-sequence SFT beats Blockwise SFT in "
        f"{tally['fullseq_wins']} of {n} seeds ({tally['fullseq_significant']} significant at the "
        f"{SIGNIFICANCE:g} level) and Blockwise SFT wins in {tally['blockwise_wins']} "
        f"({tally['blockwise_significant']} significant); full-sequence minus Blockwise accuracy is "
        f"{d['mean']:+.1f} points on average, from {d['min']:+.1f} to {d['max']:+.1f}. Seeds in which "
        f"full-sequence / Blockwise SFT is ahead, by inference block length: {ahead}."
    )


def _range(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def time_sentence(runs: list[dict]) -> str:
    """The runs' wall time and stage times (ranges over the runs)."""
    minutes = _range([run["seconds"] / 60 for run in runs], "{:.1f}")
    stages = ", ".join(
        f"{label} {_range([run['stages'][stage] for run in runs], '{:.0f}')} s"
        for stage, label in STAGES.items()
        if all(stage in run["stages"] for run in runs)
    )
    loads = _range([run["environment"].get("load_average_at_start") or 0.0 for run in runs], "{:.1f}")
    count = f"{len(runs)} runs" if len(runs) > 1 else "one run"
    return f"**{minutes} minutes** ({count}; {stages}; load average {loads} at the start)"


def budget_sentence(run: dict) -> str:
    bw, fs = run["budgets"]["blockwise"], run["budgets"]["fullseq"]
    return (
        f"Blockwise SFT {bw['steps']:,} steps over {bw['samples']:,} samples, "
        f"{bw['supervised_tokens']:,} supervised tokens, against full-sequence SFT's {fs['steps']:,} steps "
        f"and {fs['supervised_tokens']:,}; Blockwise processes {bw['tokens'] / fs['tokens']:.1f}x the tokens"
    )


def is_default(run: dict) -> bool:
    """Whether the run is what ``blocksft demo`` does without flags (output folder aside)."""
    defaults = asdict(DemoConfig())
    return all(run["settings"].get(k) == v for k, v in defaults.items() if k not in ("out", "overwrite"))


def render(flops_runs: list[dict], tokens_runs: list[dict], command: str) -> str:
    """The README's generated part (between the markers, markers excluded)."""
    check_comparable(flops_runs)
    check_comparable(flops_runs + tokens_runs, same_settings=False)
    first = flops_runs[0]
    seeds = ", ".join(str(run["seed"]) for run in flops_runs)
    n_test = first["settings"]["n_test"]
    lines = [
        f"Measured with `{command}` on {describe_environment(first['environment'])}: the demo took "
        f"{time_sentence(flops_runs)}.",
        "",
        f"Seed {first['seed']}{', what `blocksft demo` prints' if is_default(first) else ''}: strict "
        f"accuracy on the {n_test} held-out problems, in %, with 95 % Wilson intervals:",
        "",
        *accuracy_rows(first),
        "",
        first["results"]["verdict"],
    ]
    if len(flops_runs) > 1:
        lines += [
            "",
            f"Over {len(flops_runs)} seeds ({seeds}; each draws its own task, base model and noise), mean "
            "[smallest, largest] strict accuracy in %:",
            "",
            *spread_rows(flops_runs),
            "",
            tally_sentence(flops_runs),
        ]
    for run in tokens_runs:
        lines += [
            "",
            f"Matched on supervised tokens instead (`blocksft demo --budget equal-tokens`, seed "
            f"{run['seed']}): {budget_sentence(run)}. It took {time_sentence([run])}.",
            "",
            *accuracy_rows(run),
            "",
            run["results"]["verdict"],
        ]
    return "\n".join(lines)


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with what lies between the begin and end markers replaced by ``body``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise BlocksftError(f"the README needs exactly one {BEGIN} ... {END} pair")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}"


# ----- Running the demos --------------------------------------------------------------------------


def run_seed(folder: Path, seed: int, extra: list[str]) -> dict:
    """One ``blocksft demo`` in its own process into ``folder`` (its output in ``folder``.log)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.with_name(folder.name + ".log")
    command = [sys.executable, "-m", "blocksft", "demo", "--seed", str(seed), "--out", str(folder)]
    command += ["--overwrite", *extra]
    # The demo runs the code this module was imported from, installed or not.
    source = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    began = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise BlocksftError(f"{' '.join(command[2:])} failed (exit {done.returncode}); see {log}")
    run = load_run(folder)
    print(f"{folder}: {(time.perf_counter() - began) / 60:.1f} min", file=sys.stderr, flush=True)
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="blocksft bench demo",
        description="Run `blocksft demo` for several seeds (one after the other) and rewrite the README's "
        "demo results between its markers.",
    )
    parser.add_argument("--seeds", default="0,1,2,3,4", help="equal-flops seeds (the first is shown in full)")
    parser.add_argument(
        "--equal-tokens-seeds", default="0", help="seeds of `--budget equal-tokens` runs ('' for none)"
    )
    parser.add_argument("--runs", default="demo-runs", help="folder for the demo outputs and their logs")
    parser.add_argument("--readme", default="README.md", help="the file whose marked part is rewritten")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the runs already finished under --runs instead of running them again",
    )
    parser.add_argument(
        "--demo-args", default="", help="more `blocksft demo` flags for every run, e.g. '--threads 2'"
    )
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise BlocksftError(f"seeds are integers separated by commas, got {text!r}") from err


def command_line(args: argparse.Namespace) -> str:
    parts = ["blocksft bench demo", f"--seeds {args.seeds}"]
    parts.append(f"--equal-tokens-seeds {args.equal_tokens_seeds or chr(39) * 2}")
    if args.demo_args:
        parts.append(f"--demo-args='{args.demo_args}'")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seeds, token_seeds = _seeds(args.seeds), _seeds(args.equal_tokens_seeds)
    if not seeds:
        raise BlocksftError("--seeds needs at least one seed")
    readme = Path(args.readme)
    if not readme.is_file():
        raise BlocksftError(f"--readme {readme}: no such file (the file whose marked part is rewritten)")
    text = readme.read_text()
    replace_between_markers(text, "")  # fail before hours of runs, not after
    runs_dir, extra = Path(args.runs), args.demo_args.split()
    plans = [("equal-flops", s, []) for s in seeds] + [
        ("equal-tokens", s, ["--budget", "equal-tokens"]) for s in token_seeds
    ]
    done: dict[str, list[dict]] = {"equal-flops": [], "equal-tokens": []}
    for budget, seed, flags in plans:
        folder = runs_dir / budget / f"seed-{seed}"
        finished = args.reuse and (folder / "demo.json").exists()
        run = load_run(folder) if finished else run_seed(folder, seed, [*flags, *extra])
        done[budget].append(run)
    body = render(done["equal-flops"], done["equal-tokens"], command_line(args))
    readme.write_text(replace_between_markers(text, body))
    print(f"{readme}: demo results rewritten from {sum(map(len, done.values()))} runs", file=sys.stderr)
    return 0
