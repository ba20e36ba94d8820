"""``blocksft demo``: task -> tokenizer -> pretrained base -> prepare -> two SFT runs -> eval -> report.

Every stage calls the library entry point a GPU user calls (``run_prepare``, ``run_train``,
``run_eval``); only the task, the tokenizer and the randomly initialised base are made here, since
a real run downloads those.
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

from blocksft.demo.config import DemoConfig
from blocksft.errors import BlocksftError

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
        import torch

        from blocksft.demo.threads import busy_cores, threads_for, usable_cores

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
    from blocksft.outputs import check_output_path

    out = check_output_path(config.out, "--out", kind="folder")
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise BlocksftError(
                f"--out {out} exists and is not empty; pass --overwrite or choose another folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_base(config: DemoConfig, tokenizer, folder: Path) -> Path:
    """A randomly initialised tiny LLaDA (seeded) with the demo tokenizer, saved as a checkpoint."""
    from blocksft.testing import tiny_llada_model

    model = tiny_llada_model(
        tokenizer,
        seed=config.seed,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_heads,
        mlp_hidden_size=config.mlp_hidden_size,
        max_sequence_length=512,
        init_std=config.init_std,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pretraining_records(documents: list[str], tokenizer, path: Path) -> Path:
    """Documents as records: BOS is the 'prompt', the text is what the masked-diffusion loss covers."""
    import torch

    from blocksft.data.records import save_records, tokenizer_fingerprint

    encoded = tokenizer(documents)["input_ids"]  # BOS + text
    records = [{"prompt_len": 1, "full_ids": torch.tensor(ids, dtype=torch.long)} for ids in encoded]
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


def train_config(config: DemoConfig, **overrides):
    from blocksft.config.train import TrainConfig

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


def _run_stages(config: DemoConfig) -> DemoResult:
    from blocksft.config.eval import EvalConfig, output_path
    from blocksft.config.prepare import PrepareConfig
    from blocksft.config.sampler import SamplerConfig
    from blocksft.data.prepare import run_prepare
    from blocksft.demo import task as demo_task
    from blocksft.demo.provenance import run_environment
    from blocksft.demo.report import demo_results, loss_summary, read_budget, write_report
    from blocksft.evaluate.runner import results_grid, run_eval
    from blocksft.objectives import get_objective
    from blocksft.special_tokens import mask_token_id
    from blocksft.tokenizer import build_tokenizer
    from blocksft.train.run import run_train

    environment = run_environment(config.fixed_threads or config.threads)
    out = prepare_output(config)
    clock = StageClock(stage_weights(config), config.fixed_threads)
    spec = config.task

    clock.begin("task")
    train, test = demo_task.make_splits(config.seed, config.n_train, config.n_test, spec)
    documents = demo_task.pretraining_documents(train, config.seed, spec)
    tokenizer = build_tokenizer(
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
    init = build_base(config, tokenizer, out / "checkpoints" / "init")
    pretrain_data = pretraining_records(documents, tokenizer, out / "data" / "pretrain.pt")

    clock.begin("pretrain")
    pretrained = run_train(
        train_config(
            config,
            objective="fullseq",
            model=str(init),
            data=str(pretrain_data),
            total_steps=config.pretrain_steps,
            epochs=epochs_for(config.pretrain_steps, config.micro_batch, len(documents)),
            lr=config.pretrain_lr,
            ckpt_dir=str(out / "checkpoints" / "base"),
        )
    )
    base = str(pretrained.exports[-1])

    clock.begin("prepare")
    sft_data = out / "data" / "sft.pt"
    prepared = run_prepare(
        PrepareConfig(
            output=str(sft_data),
            model=base,
            dataset=str(files["train"]),
            max_len=256,
            max_samples=0,
            filter_type="",
            prompt_template="{query}",
            block_size=config.block_size,
            overwrite=True,
        ),
        command="blocksft demo",
    )

    # Padding is supervised (as EOS, like the reference) up to one fixed length, --max-len (every
    # batch padded to it): keep it the longest record.
    sft_len = 8 * math.ceil(max(len(r["full_ids"]) for r in prepared.records) / 8)
    # Blocks per sample as the training schedule counts them (padding supervised up to sft_len).
    blockwise = get_objective(
        "blockwise", mask_id=mask_token_id(tokenizer), block_size=config.block_size, supervise_padding=True
    )
    prompt_lens = [int(r["prompt_len"]) for r in prepared.records]
    answer_lens = [len(r["full_ids"]) - p for r, p in zip(prepared.records, prompt_lens)]
    steps = sft_steps(config, blockwise.block_counts(prompt_lens, answer_lens, max_len=sft_len))
    checkpoints, logs = {"base": base}, {}
    for objective in OBJECTIVES:
        clock.begin(f"sft {objective}")
        result = run_train(
            train_config(
                config,
                objective=objective,
                model=base,
                data=str(sft_data),
                total_steps=steps[objective],
                epochs=epochs_for(steps[objective], config.micro_batch, len(train)),
                lr=config.sft_lr,
                supervise_padding=True,
                pad_to_max_len=True,
                max_len=sft_len,
                ckpt_dir=str(out / "checkpoints" / objective),
            )
        )
        checkpoints[objective] = str(result.exports[-1])
        logs[objective] = result.logs_dir

    clock.begin("eval")
    sampler = SamplerConfig(
        gen_length=config.gen_length,
        block_length=config.block_lengths[0],
        steps=config.gen_length,
        stop_at_eos=True,
    )
    evaluation = EvalConfig(
        model=[checkpoints[name] for name in OBJECTIVES],
        task="gsm8k",
        data=str(files["test"]),
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
    base_block = base_block_length(config)
    # Its file named as the grid names its cells, next to the others.
    base_output = output_path(evaluation, base, base_block, sampler.gen_length, sampler.steps)
    base_eval = dataclasses.replace(
        evaluation, model=[base], block_length=str(base_block), output=str(base_output)
    )
    cells = run_eval(base_eval, sampler) + run_eval(evaluation, sampler)
    results_grid(cells, evaluation, sampler)  # the grid of every cell, base included

    clock.begin("report")
    names = {Path(path).name: name for name, path in checkpoints.items()}
    for cell in cells:
        cell["name"] = names[cell["model"]]
    results = demo_results(cells, config.block_size)
    clock.end()
    stage_seconds = dict(clock.seconds)
    report = write_report(
        out,
        config=config,
        cells=cells,
        results=results,
        checkpoints=checkpoints,
        logs=logs,
        sampler=sampler,
        stage_seconds=stage_seconds,
        stage_threads=dict(clock.threads),
        total_seconds=clock.total,
        train=train,
        environment=environment,
    )
    losses = {"pretrain": loss_summary(pretrained.logs_dir)}
    losses.update((name, loss_summary(path)) for name, path in logs.items())
    summary = {
        "seed": config.seed,
        "seconds": round(clock.total, 1),
        "stages": stage_seconds,
        "stage_cpu_seconds": dict(clock.cpu_seconds),
        "stage_threads": dict(clock.threads),
        "environment": environment,
        "settings": dataclasses.asdict(config),
        "results": results,
        "losses": losses,
        "budgets": {name: read_budget(path) for name, path in logs.items()},
        "checkpoints": checkpoints,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(out, report, clock.total, stage_seconds, checkpoints, cells)
