"""The demo's report: ``report.md``, ``loss.png`` and ``accuracy_by_block.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors import safe_open

from blocksft.config.plot import PlotConfig
from blocksft.demo.provenance import describe_environment
from blocksft.evaluate.results import compare_files
from blocksft.families import ModelFamily
from blocksft.train.logs import read_loss_csv
from blocksft.train.plot import plot_runs

METRIC = "strict"  # the "#### N" answer: the format SFT teaches, so the base cannot pass by luck
LABELS = {"base": "base (before SFT)", "blockwise": "Blockwise SFT", "fullseq": "full-sequence SFT"}
COLORS = {"base": "#888888", "blockwise": "#1f77b4", "fullseq": "#d62728"}
SIGNIFICANCE = 0.05


def accuracy_table(cells: list[dict]) -> dict[str, dict[int, dict]]:
    """``{name: {block_length: metrics[METRIC]}}`` from :func:`run_eval`'s cells."""
    table: dict[str, dict[int, dict]] = {}
    for cell in cells:
        table.setdefault(cell["name"], {})[cell["block_length"]] = cell["metrics"][METRIC]
    return table


def paired_tests(cells: list[dict], a: str = "blockwise", b: str = "fullseq") -> dict[int, dict]:
    """McNemar's test of ``a`` against ``b`` at every inference block length (same problems)."""
    files = {(cell["name"], cell["block_length"]): cell["output"] for cell in cells}
    tests = {}
    for (name, block), path in sorted(files.items()):
        if name != a or (b, block) not in files:
            continue
        result = compare_files(path, files[(b, block)])
        m = result["metrics"][METRIC]
        tests[block] = {
            "n": result["shared"],
            "accuracy_a": m["accuracy_a"],
            "accuracy_b": m["accuracy_b"],
            "a_only": m["a_only"],
            "b_only": m["b_only"],
            "p": m["mcnemar_exact_p"],
        }
    return tests


def demo_results(cells: list[dict], training_block: int) -> dict:
    """What the demo found, as ``demo.json`` records it: every cell's strict and flexible counts and
    interval, the paired tests and the verdict (block lengths as keys)."""
    accuracy: dict[str, dict[int, dict]] = {}
    for cell in cells:
        accuracy.setdefault(cell["name"], {})[cell["block_length"]] = {
            metric: {key: values[key] for key in ("correct", "total", "accuracy", "ci95")}
            for metric, values in cell["metrics"].items()
        }
    tests = paired_tests(cells)
    return {
        "metric": METRIC,
        "training_block": training_block,
        "accuracy": accuracy,
        "paired": tests,
        "verdict": verdict(tests, training_block),
    }


def loss_summary(logs_dir: Path) -> dict:
    """A training run's loss: steps logged, first and last value, and the mean over the run."""
    losses = read_loss_csv(Path(logs_dir) / "train_loss.csv")["loss"]
    return {
        "steps": len(losses),
        "first": losses[0],
        "last": losses[-1],
        "mean": sum(losses) / len(losses),
    }


def verdict(tests: dict[int, dict], training_block: int) -> str:
    """One honest sentence on which SFT won at the training block size, with its significance."""
    if training_block not in tests:
        return "The training block size was not among the inference block lengths, so no verdict is drawn."
    t = tests[training_block]
    diff = 100 * (t["accuracy_a"] - t["accuracy_b"])
    if diff == 0:
        lead = "Blockwise and full-sequence SFT solve the same share of problems"
    else:
        winner, loser = (
            ("Blockwise SFT", "full-sequence SFT") if diff > 0 else ("Full-sequence SFT", "Blockwise SFT")
        )
        lead = f"{winner} beats {loser} by {abs(diff):.1f} points"
    sig = (
        f"significant at the {SIGNIFICANCE:g} level"
        if t["p"] < SIGNIFICANCE
        else f"not significant at the {SIGNIFICANCE:g} level: on this many problems it may be chance"
    )
    return (
        f"{lead} at the training block size {training_block} "
        f"({t['a_only']} problems only Blockwise solves, {t['b_only']} only full-sequence; "
        f"McNemar exact p = {t['p']:.3g}, {sig})."
    )


def plot_accuracy(table: dict[str, dict[int, dict]], training_block: int, path: Path) -> Path:
    """Accuracy (95 % Wilson interval) against the inference block length, one line per model."""
    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)  # draws PNGs without pyplot's global figure registry
    ax = fig.subplots()
    for name, by_block in table.items():
        blocks = sorted(by_block)
        acc = [100 * by_block[b]["accuracy"] for b in blocks]
        low = [a - 100 * by_block[b]["ci95"][0] for a, b in zip(acc, blocks)]
        high = [100 * by_block[b]["ci95"][1] - a for a, b in zip(acc, blocks)]
        ax.errorbar(
            blocks,
            acc,
            yerr=[low, high],
            marker="o",
            capsize=4,
            label=LABELS.get(name, name),
            color=COLORS.get(name),
        )
    ax.axvline(training_block, color="#999999", linestyle="--", linewidth=1)
    ax.text(
        training_block, 101, f" training block {training_block}", fontsize=8, color="#555555", va="bottom"
    )
    ax.set_xscale("log", base=2)
    all_blocks = sorted({b for by_block in table.values() for b in by_block})
    ax.set_xticks(all_blocks, [str(b) for b in all_blocks])
    ax.set_ylim(0, 108)
    ax.set_xlabel("inference block length (tokens; semi-autoregressive decoding)")
    ax.set_ylabel(f"held-out accuracy, {METRIC} (%)")
    ax.set_title("Accuracy by inference block length (95 % Wilson intervals)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_losses(logs: dict[str, Path], path: Path, budget: str = "equal-flops") -> Path:
    """Both SFT runs' training loss (the shared ``blocksft plot`` code): against the optimizer step
    under equal FLOPs, against the supervised tokens under equal tokens."""
    names = list(logs)
    equal_tokens = budget == "equal-tokens"
    return plot_runs(
        [logs[name] for name in names],
        PlotConfig(
            output=str(path),
            x="supervised_tokens" if equal_tokens else "step",
            smooth=0.6,
            log_y=True,
            labels=[LABELS.get(name, name) for name in names],
            title=f"SFT training loss (same base, same {'supervised tokens' if equal_tokens else 'steps'})",
        ),
    )


def budget_sentences(config, budgets: dict[str, dict], n_train: int) -> list[str]:
    """What was matched between the two SFT runs, and what was not, with the measured counts."""
    bw, fs = budgets["blockwise"], budgets["fullseq"]
    if config.budget == "equal-tokens":
        return [
            f"- Blockwise SFT took {bw['steps']} optimizer steps to full-sequence SFT's "
            f"{fs['steps']} (of {config.micro_batch} samples each, from {n_train:,} problems), so that both "
            f"supervise about as many tokens ({bw['supervised_tokens']:,} against "
            f"{fs['supervised_tokens']:,}: EQUAL-TOKENS, the paper's second protocol). Blockwise SFT "
            f"thus processed {_times(bw['tokens'], fs['tokens'])} the tokens and compute.",
        ]
    return [
        f"- Both SFT runs take the same {fs['steps']} optimizer steps of {config.micro_batch} samples, "
        "the same problems in the same seeded order: the same processed tokens and compute (EQUAL-FLOPS, "
        "the paper's first protocol). They do not supervise the same number of tokens: Blockwise SFT "
        f"puts the loss on one block per sample, so full-sequence SFT supervised "
        f"{_times(fs['supervised_tokens'], bw['supervised_tokens'])} as many ({fs['supervised_tokens']:,} "
        f"against {bw['supervised_tokens']:,}). `--budget equal-tokens` gives Blockwise SFT the steps "
        "that match them.",
    ]


def block_table(
    cells: dict[str, dict[int, str]], training_block: int, column: Callable[[int, bool], str]
) -> list[str]:
    """A markdown table: a row per model (in ``cells``' order), a column per inference block length
    (headed ``column(block, is_training_block)``), ``-`` where a model lacks a block length."""
    blocks = sorted({b for by_block in cells.values() for b in by_block})
    lines = [
        "| model | " + " | ".join(column(b, b == training_block) for b in blocks) + " |",
        "|---|" + "---|" * len(blocks),
    ]
    for name, by_block in cells.items():
        lines.append(
            f"| {LABELS.get(name, name)} | " + " | ".join(by_block.get(b, "-") for b in blocks) + " |"
        )
    return lines


def percent_with_interval(m: dict) -> str:
    return f"{100 * m['accuracy']:.1f} [{100 * m['ci95'][0]:.1f}, {100 * m['ci95'][1]:.1f}]"


def read_budget(logs_dir: Path) -> dict:
    """A training run's ``budget.json`` (steps, samples, supervised and processed tokens, FLOPs)."""
    return json.loads((Path(logs_dir) / "budget.json").read_text())


@dataclass
class DemoRun:
    """A finished demo run, as the report and ``demo.json`` read it.

    Attributes:
        out: the output folder.
        family: the model family the demo trained.
        cells: :func:`run_eval`'s cells, each named by its model (``base``, ``blockwise``, ``fullseq``).
        results: :func:`demo_results` of ``cells``.
        checkpoints, logs: each model's checkpoint folder and each SFT run's logs folder.
        sampler: the decoding settings.
        stage_seconds, stage_threads, total_seconds: wall time and threads per stage, and in all.
        train: the training problems.
        environment: :func:`~blocksft.demo.provenance.run_environment`'s record.
    """

    out: Path
    config: Any
    family: ModelFamily
    cells: list[dict]
    results: dict
    checkpoints: dict[str, str]
    logs: dict[str, Path]
    sampler: Any
    stage_seconds: dict[str, float]
    stage_threads: dict[str, int]
    total_seconds: float
    train: list
    environment: dict


def write_report(run: DemoRun) -> Path:
    """Write ``report.md`` and both plots into ``run.out``; returns the report's path."""
    config, out = run.config, run.out
    plot_accuracy(accuracy_table(run.cells), config.block_size, out / "accuracy_by_block.png")
    plot_losses(run.logs, out / "loss.png", config.budget)
    budgets = {name: read_budget(path) for name, path in run.logs.items()}
    n_params = _parameter_count(run.checkpoints["base"])
    lines = [
        *introduction(run),
        *accuracy_section(run),
        *meaning_section(run, budgets, n_params),
        *settings_section(run, budgets, n_params),
        *time_and_files_section(run),
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def introduction(run: DemoRun) -> list[str]:
    return [
        "# blocksft demo: Blockwise SFT against full-sequence SFT, end to end on CPU",
        "",
        f"A tiny {run.family.title}-style masked diffusion model is pretrained on the text of a synthetic "
        "task, then fine-tuned twice from the same base, once with Blockwise SFT (one answer block noised "
        "per step, the answer before it clean, everything after it hidden) and once with classical "
        f"full-sequence masked SFT, on a matched budget ({run.config.budget}). Both SFT models are "
        "evaluated on held-out problems with semi-autoregressive block decoding at several inference "
        "block lengths, the base at one.",
        "",
        f"**Result.** {run.results['verdict']}",
        "",
    ]


def accuracy_section(run: DemoRun) -> list[str]:
    """The accuracy table, the paired tests and the two plots."""
    config = run.config
    cells = {
        name: {b: percent_with_interval(m) for b, m in by_block.items()}
        for name, by_block in accuracy_table(run.cells).items()
    }
    lines = [
        "## Accuracy on held-out problems",
        "",
        f"{config.n_test} problems never seen in training; strict accuracy (the `#### N` answer equals the "
        "gold answer), in %, with 95 % Wilson intervals. Columns: inference block length; "
        f"**{config.block_size}** is the training block size of Blockwise SFT.",
        "",
        *block_table(cells, config.block_size, lambda b, training: f"**{b}**" if training else str(b)),
    ]
    lines += [
        "",
        "Paired test (McNemar, exact), Blockwise against full-sequence SFT on the same problems:",
        "",
        "| inference block | Blockwise | full-sequence | only Blockwise right | only full-seq right | p |",
        "|---|---|---|---|---|---|",
    ]
    for block, t in run.results["paired"].items():
        lines.append(
            f"| {block} | {100 * t['accuracy_a']:.1f} | {100 * t['accuracy_b']:.1f} | {t['a_only']} | "
            f"{t['b_only']} | {t['p']:.3g} |"
        )
    return lines + [
        "",
        "![accuracy by inference block length](accuracy_by_block.png)",
        "",
        "![SFT training loss](loss.png)",
        "",
        "The two losses are not on one scale: Blockwise SFT's is the loss of one block given a clean "
        "prefix, full-sequence SFT's that of a randomly masked whole answer. Each curve shows its own "
        "run converging.",
        "",
    ]


def meaning_section(run: DemoRun, budgets: dict[str, dict], n_params: int) -> list[str]:
    return [
        "## What the numbers mean, and what they do not",
        "",
        "- The base model was pretrained with the plain masked-diffusion objective on the task's stories "
        "and arithmetic facts, never on the chat format or a worked answer: its accuracy is what the "
        "task gives without SFT. It has never seen the `#### N` line that strict scoring reads, so it "
        "is decoded at one inference block length only.",
        *budget_sentences(run.config, budgets, len(run.train)),
        "- Both start from the same base. The paired test compares the two on identical problems; the "
        "intervals say how far each accuracy could move on another draw of test problems.",
        f"- It is one seed of a {n_params / 1e6:.2g}-million-parameter model on a toy task. It shows the "
        "pipeline and the kind of comparison the method calls for; it is not evidence about LLaDA-8B on "
        "GSM8K or MATH, where the paper reports its own numbers. Run `--seed` with other values to see "
        "the spread.",
        "- Flexible scoring (the last number of the text, in `results/`) credits the base with a few "
        "lucky guesses; strict scoring needs the answer format that only SFT teaches.",
        "",
    ]


def settings_section(run: DemoRun, budgets: dict[str, dict], n_params: int) -> list[str]:
    """The task (with one training problem), tokenizer, model, training and decoding settings,
    and each SFT run's budget."""
    config, family, example = run.config, run.family, run.train[0]
    blocks = sorted({cell["block_length"] for cell in run.cells})
    shape = family.shape(family.config_class.from_pretrained(run.checkpoints["base"]))
    heads = f"{shape.n_heads} heads" + (
        f" ({shape.n_kv_heads} key/value)" if shape.n_kv_heads != shape.n_heads else ""
    )
    lines = [
        "## Settings",
        "",
        f"- Task: {len(run.train):,} training and {config.n_test} held-out word problems "
        f"(seed {config.seed}), "
        f"{_steps(config)} each, counts 0-{config.max_value}, changes of at most "
        f"{config.max_operand}. One training problem:",
        "",
        "  ```text",
        *[f"  {line}" for line in example.question.split(". ")],
        "  ---",
        *[f"  {line}" for line in example.answer.splitlines()],
        "  ```",
        "",
        f"- Tokenizer: byte-level BPE trained on the task ({shape.vocab_rows} tokens, whole "
        f"numbers as single tokens) with {family.title}'s special tokens and chat template; prompts are "
        "the bare question in the chat template.",
        f"- Model: {family.title} architecture, {n_params / 1e6:.2f} M parameters (width {config.d_model}, "
        f"{config.n_layers} blocks, {heads}, SwiGLU {config.mlp_hidden_size}), random "
        f"init with std {config.init_std:g}.",
        f"- Pretraining: {config.pretrain_steps} steps of {config.micro_batch}, lr {config.pretrain_lr:g}, "
        "masked diffusion over each document (mask rate ~ U(0, 1)).",
        f"- SFT: full fine-tuning, {budgets['blockwise']['steps']} (Blockwise) and "
        f"{budgets['fullseq']['steps']} (full-sequence) "
        f"steps of {config.micro_batch}, lr {config.sft_lr:g} "
        f"(warmup 10 %, cosine), Blockwise block size {config.block_size}, padding supervised as EOS.",
        f"- Decoding: {run.sampler.gen_length} tokens, one token per step ({run.sampler.steps} steps), "
        f"low-confidence remasking, temperature 0; inference block lengths {', '.join(map(str, blocks))}.",
        "",
        "| run | optimizer steps | samples | supervised tokens | processed tokens | estimated FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in budgets.items():
        lines.append(
            f"| {LABELS.get(name, name)} | {b['steps']} | {b['samples']:,} | {b['supervised_tokens']:,} | "
            f"{b['tokens']:,} | {b['estimated_flops']:.2e} |"
        )
    return lines + [""]


def time_and_files_section(run: DemoRun) -> list[str]:
    threads = run.stage_threads
    return [
        "## Time and files",
        "",
        f"Total wall time {run.total_seconds / 60:.1f} min: "
        + ", ".join(
            f"{name} {seconds:.0f} s ({threads[name]} thread{'s' if threads[name] != 1 else ''})"
            for name, seconds in run.stage_seconds.items()
        )
        + f". Made with {describe_environment(run.environment)}, seed {run.config.seed}; the same seed, "
        "torch version and CPU instruction set give the same numbers (`demo.json` records all of them).",
        "",
        "- `checkpoints/`: the random init, the pretrained base and both SFT models (merged, loadable with "
        "`blocksft generate --chat --model ...` and `AutoModel.from_pretrained`), each with its `*_logs/` "
        "(loss CSV, budget, run config).",
        "- `data/`: the task (`train.jsonl`, `test.jsonl`), the pretraining and SFT record files.",
        "- `results/`: one JSONL of per-problem outputs per model and block length, their summaries, and "
        "the grid (`demo.grid.md`, `.csv`, heatmap).",
        "",
    ]


def _steps(config) -> str:
    if config.min_steps == config.max_steps:
        return f"{config.min_steps} steps"
    return f"{config.min_steps}-{config.max_steps} steps"


def _times(a: float, b: float) -> str:
    return f"{a / b:.1f} times" if b else "infinitely many times"


def _parameter_count(checkpoint: str) -> int:
    total = 0
    for path in Path(checkpoint).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                total += math.prod(fh.get_slice(key).get_shape())
    return total
