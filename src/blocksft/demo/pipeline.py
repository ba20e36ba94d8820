"""``blocksft demo``: task -> tokenizer -> pretrained base -> prepare -> two SFT runs -> eval -> report.

Every stage calls the library entry point a GPU user calls (``run_prepare``, ``run_train``,
``run_eval``); only the task, the tokenizer and the randomly initialised base are made here, since
a real run downloads those. Everything that depends on the model family (tokenizer, special
tokens, chat template, architecture) comes from its :class:`~blocksft.families.ModelFamily`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blocksft.config.eval import EvalConfig, output_path
from blocksft.config.prepare import PrepareConfig
from blocksft.config.sampler import SamplerConfig
from blocksft.config.train import TrainConfig
from blocksft.data.prepare import run_prepare
from blocksft.data.records import save_records, tokenizer_fingerprint
from blocksft.demo import task as demo_task
from blocksft.demo.config import DemoConfig
from blocksft.demo.provenance import run_environment
from blocksft.demo.report import DemoRun, demo_results, loss_summary, read_budget, write_report
from blocksft.demo.threads import busy_cores, threads_for, usable_cores
from blocksft.errors import BlocksftError
from blocksft.evaluate.runner import results_grid, run_eval
from blocksft.families import ModelFamily, ModelShape, family_named
from blocksft.objectives import get_objective
from blocksft.outputs import check_output_path
from blocksft.special_tokens import mask_token_id
from blocksft.train.run import run_train

OBJECTIVES = ("blockwise", "fullseq")


@dataclass
class DemoResult:
    out: Path
    report: Path
    seconds: float
    stage_seconds: dict[str, float]
    checkpoints: dict[str, str]
    cells: list[dict] = field(default_factory=list)


class StageClock:
    """Prints each stage's start with the elapsed time and an estimate of what is left.

    The estimate scales the stages still to run by their planned share of the work (training
    tokens, decoding forwards) at the speed measured so far, so it sharpens as the run goes. Each
    stage's process CPU time is kept too: with one thread, wall time far above it means that
    other jobs took the cores.
    """

    def __init__(self, weights: dict[str, float], threads: int | None = None):
        self.weights, self.start, self.seconds, self.cpu_seconds = weights, time.perf_counter(), {}, {}
        self.fixed_threads, self.threads = threads, {}
        self.current: tuple[str, float, float] | None = None

    def begin(self, name: str) -> None:
        """Start stage ``name`` with its torch threads: the fixed count, or the idle cores now."""
        self.end()
        threads = self.fixed_threads or threads_for(usable_cores(), busy_cores())
        torch.set_num_threads(threads)
        self.threads[name] = threads
        elapsed = time.perf_counter() - self.start
        done = sum(self.weights[s] for s in self.seconds)
        left = sum(w for s, w in self.weights.items() if s not in self.seconds)
        # Estimated only once a training stage has set the pace: before that it would be a guess.
        eta = f", about {_clock(elapsed * left / done)} left" if "pretrain" in self.seconds else ""
        number = list(self.weights).index(name) + 1
        print(
            f"[{number}/{len(self.weights)}] {name}  (elapsed {_clock(elapsed)}{eta}; "
            f"{threads} thread{'s' if threads != 1 else ''})",
            file=sys.stderr,
            flush=True,
        )
        self.current = (name, time.perf_counter(), time.process_time())

    def end(self) -> None:
        if self.current is not None:
            name, began, cpu_began = self.current
            self.seconds[name] = round(time.perf_counter() - began, 1)
            self.cpu_seconds[name] = round(time.process_time() - cpu_began, 1)
            self.current = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stage_weights(config: DemoConfig, pretrain_len: int = 40, sft_len: int = 80) -> dict[str, float]:
    """Planned work per stage in token-passes (a decoding forward counts a third of a training step)."""
    sft = config.sft_steps * config.micro_batch * sft_len
    blockwise = sft * (4 if config.budget == "equal-tokens" else 1)  # about 4 blocks per answer
    # Two models at every block length and the base at one, each decoding forward a third of a
    # training token-pass.
    cells = 2 * len(config.block_lengths) + 1
    decode = cells / 3 * config.n_test * sft_len * config.gen_length
    return {
        "task": 0.02 * sft,
        "pretrain": config.pretrain_steps * config.micro_batch * pretrain_len,
        "prepare": 0.02 * sft,
        "sft blockwise": blockwise,
        "sft fullseq": sft,
        "eval": decode,
        "report": 0.01 * sft,
    }


def base_block_length(config: DemoConfig) -> int:
    """The one inference block length the base model is decoded at: the training block size when
    it is evaluated, else the first."""
    lengths = config.block_lengths
    return config.block_size if config.block_size in lengths else lengths[0]


def prepare_output(config: DemoConfig) -> Path:
    out = check_output_path(config.out, "--out", kind="folder")
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise BlocksftError(
                f"--out {out} exists and is not empty; pass --overwrite or choose another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def kv_heads(n_heads: int, family: ModelFamily) -> int:
    """Key/value heads for ``n_heads`` query heads, grouped as in the family's tiny models (none
    for LLaDA, pairs for Dream), or one per query head where the group does not divide."""
    group = family.tiny_shape.n_heads // family.tiny_shape.n_kv_heads
    return n_heads // group if n_heads % group == 0 else n_heads


def model_shape(config: DemoConfig, family: ModelFamily, vocab_rows: int) -> ModelShape:
    """The demo model's shape: the width, depth, heads and MLP of the flags, in ``family``."""
    return ModelShape(
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_kv_heads=kv_heads(config.n_heads, family),
        mlp_hidden=config.mlp_hidden_size,
        vocab_rows=vocab_rows,
    )


def build_base(config: DemoConfig, family: ModelFamily, tokenizer, folder: Path) -> Path:
    """A randomly initialised tiny model of ``family`` (seeded) with the demo tokenizer, saved as a
    checkpoint."""
    model_config = family.tiny_config(
        tokenizer,
        model_shape(config, family, len(tokenizer)),
        **{family.init_std_key: config.init_std, family.max_positions_key: 512},
    )
    model = family.random_model(model_config, seed=config.seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pretraining_records(documents: list[str], tokenizer, path: Path) -> Path:
    """Documents as records: a start token is the 'prompt', the text is what the masked-diffusion
    loss covers. The start token is BOS, or EOS (the separator between documents) for a tokenizer
    without one: a model with shifted logits never predicts position 0, so the text starts at 1."""
    start = tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
    records = [
        {"prompt_len": 1, "full_ids": torch.tensor([start, *ids], dtype=torch.long)} for ids in encoded
    ]
    save_records(
        records, path, meta={"tokenizer": tokenizer_fingerprint(tokenizer), "source": "demo pretraining"}
    )
    return path


def epochs_for(steps: int, micro_batch: int, records: int) -> int:
    """Passes over the records that ``steps`` optimizer steps need (the plan stops at the step count)."""
    return max(1, math.ceil(steps * micro_batch / records))


def sft_steps(config: DemoConfig, blocks_per_sample: list[int]) -> dict[str, int]:
    """Optimizer steps of each SFT run under ``config.budget``.

    Both objectives mask a supervised position at the same rate p ~ U(eps, 1), over the whole
    answer (full-sequence) or over one block of it (Blockwise, the (sample, block) pairs visited in
    a seeded order). Per sample the expected loss-bearing tokens are thus E[p] x answer span against
    E[p] x answer span / blocks, so equal tokens take the mean number of blocks per sample times the
    steps.
    """
    steps = {"blockwise": config.sft_steps, "fullseq": config.sft_steps}
    if config.budget == "equal-tokens":
        mean_blocks = sum(blocks_per_sample) / len(blocks_per_sample)
        steps["blockwise"] = max(1, round(config.sft_steps * mean_blocks))
    return steps


def train_config(config: DemoConfig, **overrides) -> TrainConfig:
    values = dict(
        max_len=256,
        micro_batch=config.micro_batch,
        block_size=config.block_size,
        full_finetune=True,
        dtype="fp32",
        deepspeed=None,
        use_cpu=True,
        seed=config.seed,
        max_samples=0,
        log_every=1,
        save_every=0,
        warmup_ratio=0.1,
        weight_decay=0.0,
    )
    values.update(overrides)
    return TrainConfig(**values)


@contextmanager
def deepspeed_on_cpu():
    """Tell DeepSpeed, for the duration, that the run is on the CPU.

    accelerate imports DeepSpeed whenever it is installed (to unwrap models, even on CPU), and
    DeepSpeed then warns that it detected no GPU; ``DS_ACCELERATOR=cpu`` is DeepSpeed's own setting
    for this, which it reads once, at its first use. A value the user set is kept.
    """
    had = os.environ.get("DS_ACCELERATOR")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        yield
    finally:
        if had is None:
            os.environ.pop("DS_ACCELERATOR", None)


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the whole demo into ``config.out``; returns what it wrote and how long each stage took.

    The numbers repeat exactly with the same seed, torch version and CPU instruction set
    (``demo.json`` records what they came from); each stage sets its own thread count.
    """
    with deepspeed_on_cpu():
        return _run_stages(config)


@dataclass
class DemoTask:
    """What the task stage makes: the problems, the pretraining text, the tokenizer trained on
    them, the task's files, the random init and the pretraining records."""

    train: list[demo_task.Problem]
    test: list[demo_task.Problem]
    documents: list[str]
    tokenizer: object
    files: dict[str, Path]
    init: Path
    pretrain_data: Path


def make_task(config: DemoConfig, family: ModelFamily, out: Path) -> DemoTask:
    """The problems and their files, a tokenizer of ``family`` trained on them, the seeded random
    init and the pretraining records."""
    spec = config.task
    train, test = demo_task.make_splits(config.seed, config.n_train, config.n_test, spec)
    documents = demo_task.pretraining_documents(train, config.seed, spec)
    tokenizer = family.build_tokenizer(
        demo_task.tokenizer_corpus(train, documents, spec), config.vocab_size, split_digits=False
    )
    if config.budget == "equal-tokens":
        # Blockwise SFT trains on each (sample, block) pair at most once, so matching full-sequence
        # SFT's supervised tokens takes as many samples as it sees: more problems, drawn apart (the
        # tokenizer, the base and the test set stay those of the default run).
        wanted = config.sft_steps * config.micro_batch - len(train)
        if wanted > 0:
            seen = {p.question for p in train + test}
            train = train + demo_task.more_problems(config.seed, wanted, seen, spec)
    files = demo_task.write_task(train, test, out / "data")
    init = build_base(config, family, tokenizer, out / "checkpoints" / "init")
    pretrain_data = pretraining_records(documents, tokenizer, out / "data" / "pretrain.pt")
    return DemoTask(train, test, documents, tokenizer, files, init, pretrain_data)


def pretrain(config: DemoConfig, task: DemoTask, out: Path):
    """Masked-diffusion pretraining of the random init on the task's documents."""
    return run_train(
        train_config(
            config,
            objective="fullseq",
            model=str(task.init),
            data=str(task.pretrain_data),
            total_steps=config.pretrain_steps,
            epochs=epochs_for(config.pretrain_steps, config.micro_batch, len(task.documents)),
            lr=config.pretrain_lr,
            ckpt_dir=str(out / "checkpoints" / "base"),
        )
    )


def prepare_sft(config: DemoConfig, base: str, task: DemoTask, path: Path):
    """The SFT records of the training problems, made by ``blocksft prepare`` with the base's
    tokenizer and chat template."""
    return run_prepare(
        PrepareConfig(
            output=str(path),
            model=base,
            dataset=str(task.files["train"]),
            max_len=256,
            max_samples=0,
            filter_type="",
            prompt_template="{query}",
            block_size=config.block_size,
            overwrite=True,
        ),
        command="blocksft demo",
    )


def sft_length(records: list[dict]) -> int:
    """The length every SFT batch is padded to: the longest record, rounded up to a multiple of 8.

    Padding is supervised (as EOS, like the reference) up to one fixed length, --max-len (every
    batch padded to it): keep it the longest record."""
    return 8 * math.ceil(max(len(r["full_ids"]) for r in records) / 8)


def planned_sft_steps(
    config: DemoConfig, family: ModelFamily, tokenizer, records: list[dict]
) -> dict[str, int]:
    """:func:`sft_steps` with the blocks per sample as the training schedule counts them (padding
    supervised up to :func:`sft_length`)."""
    blockwise = get_objective(
        "blockwise",
        mask_id=mask_token_id(tokenizer, family.tokens),
        block_size=config.block_size,
        supervise_padding=True,
    )
    prompt_lens = [int(r["prompt_len"]) for r in records]
    answer_lens = [len(r["full_ids"]) - p for r, p in zip(records, prompt_lens)]
    return sft_steps(config, blockwise.block_counts(prompt_lens, answer_lens, max_len=sft_length(records)))


def fine_tune(
    config: DemoConfig,
    objective: str,
    base: str,
    sft_data: Path,
    steps: int,
    sft_len: int,
    n_train: int,
    out: Path,
):
    """One full fine-tuning run of ``objective`` from the base."""
    return run_train(
        train_config(
            config,
            objective=objective,
            model=base,
            data=str(sft_data),
            total_steps=steps,
            epochs=epochs_for(steps, config.micro_batch, n_train),
            lr=config.sft_lr,
            supervise_padding=True,
            pad_to_max_len=True,
            max_len=sft_len,
            ckpt_dir=str(out / "checkpoints" / objective),
        )
    )


def evaluate_models(
    config: DemoConfig, checkpoints: dict[str, str], test_file: Path, out: Path
) -> tuple[list[dict], SamplerConfig]:
    """Both SFT models at every inference block length and the base at one; each cell named by
    its model (``base``, ``blockwise``, ``fullseq``)."""
    sampler = SamplerConfig(
        gen_length=config.gen_length,
        block_length=config.block_lengths[0],
        steps=config.gen_length,
        stop_at_eos=True,
    )
    evaluation = EvalConfig(
        model=[checkpoints[name] for name in OBJECTIVES],
        task="gsm8k",
        data=str(test_file),
        block_length=config.eval_block_lengths,
        batch_size=config.eval_batch_size,
        output=str(out / "results" / "demo.jsonl"),
        prompt_style="chat",
        seed=config.seed,
        dtype="fp32",
        device="cpu",
    )
    # The base never saw the `#### N` line that strict scoring reads, so one block length shows
    # what it scores, at a quarter of the decoding that a row of the grid takes.
    base, base_block = checkpoints["base"], base_block_length(config)
    # Its file named as the grid names its cells, next to the others.
    base_output = output_path(evaluation, base, base_block, sampler.gen_length, sampler.steps)
    base_eval = dataclasses.replace(
        evaluation, model=[base], block_length=str(base_block), output=str(base_output)
    )
    cells = run_eval(base_eval, sampler) + run_eval(evaluation, sampler)
    results_grid(cells, evaluation, sampler)  # the grid of every cell, base included
    names = {Path(path).name: name for name, path in checkpoints.items()}
    for cell in cells:
        cell["name"] = names[cell["model"]]
    return cells, sampler


def write_summary(run: DemoRun, clock: StageClock, pretrain_logs: Path) -> Path:
    """``demo.json``: the settings, where the numbers came from, the results, losses and budgets."""
    losses = {"pretrain": loss_summary(pretrain_logs)}
    losses.update((name, loss_summary(path)) for name, path in run.logs.items())
    summary = {
        "seed": run.config.seed,
        "family": run.family.name,
        "seconds": round(clock.total, 1),
        "stages": run.stage_seconds,
        "stage_cpu_seconds": dict(clock.cpu_seconds),
        "stage_threads": run.stage_threads,
        "environment": run.environment,
        "settings": dataclasses.asdict(run.config),
        "results": run.results,
        "losses": losses,
        "budgets": {name: read_budget(path) for name, path in run.logs.items()},
        "checkpoints": run.checkpoints,
    }
    path = run.out / "demo.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _run_stages(config: DemoConfig) -> DemoResult:
    family = family_named(config.family)
    environment = run_environment(config.fixed_threads or config.threads)
    out = prepare_output(config)
    clock = StageClock(stage_weights(config), config.fixed_threads)

    clock.begin("task")
    task = make_task(config, family, out)

    clock.begin("pretrain")
    pretrained = pretrain(config, task, out)
    base = str(pretrained.exports[-1])

    clock.begin("prepare")
    sft_data = out / "data" / "sft.pt"
    prepared = prepare_sft(config, base, task, sft_data)
    steps = planned_sft_steps(config, family, task.tokenizer, prepared.records)
    checkpoints, logs = {"base": base}, {}
    for objective in OBJECTIVES:
        clock.begin(f"sft {objective}")
        result = fine_tune(
            config,
            objective,
            base,
            sft_data,
            steps[objective],
            sft_length(prepared.records),
            len(task.train),
            out,
        )
        checkpoints[objective] = str(result.exports[-1])
        logs[objective] = result.logs_dir

    clock.begin("eval")
    cells, sampler = evaluate_models(config, checkpoints, task.files["test"], out)

    clock.begin("report")
    results = demo_results(cells, config.block_size)
    clock.end()
    run = DemoRun(
        out=out,
        config=config,
        family=family,
        cells=cells,
        results=results,
        checkpoints=checkpoints,
        logs=logs,
        sampler=sampler,
        stage_seconds=dict(clock.seconds),
        stage_threads=dict(clock.threads),
        total_seconds=clock.total,
        train=task.train,
        environment=environment,
    )
    report = write_report(run)
    write_summary(run, clock, pretrained.logs_dir)
    return DemoResult(out, report, clock.total, run.stage_seconds, checkpoints, cells)
