"""Prompts -> semi-autoregressive generation -> scored JSONL rows, resumable and shardable.

Single process::

    blocksft eval --model CKPT --task gsm8k --output results.jsonl

Several GPUs (``torchrun`` or ``accelerate launch`` set RANK/WORLD_SIZE): problem ``i`` goes to rank
``i % world_size``; each rank appends to its own part file, and after a barrier rank 0 merges the
parts into the output in dataset order and writes the summary (see :mod:`blocksft.evaluate.results`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

import torch
import transformers

import blocksft
from blocksft.config.eval import EvalConfig, grid_stem, model_tag, output_path
from blocksft.config.prepare import ALPACA_PROMPT
from blocksft.config.sampler import SamplerConfig
from blocksft.data.prompts import load_prompt_template, render_prompt_ids
from blocksft.data.tasks import Problem, load_gsm8k, load_math
from blocksft.errors import BlocksftError
from blocksft.evaluate import gsm8k, results
from blocksft.evaluate import math as math_task
from blocksft.evaluate.grid import write_grid
from blocksft.generation.sampler import generate
from blocksft.generation.text import decode_answer
from blocksft.generation.transfer import left_pad
from blocksft.model.loading import check_device, load_model
from blocksft.outputs import check_output_path, claim
from blocksft.progress import progress as progress_bar
from blocksft.rng import batch_seed
from blocksft.special_tokens import (
    SpecialIds,
    resolve_special_ids,
    special_text_pattern,
    special_text_problem,
)
from blocksft.tokenizer import load_tokenizer

TASK_MODULES = {"gsm8k": gsm8k, "math": math_task}  # each has score(output, gold) and METRICS


# --- processes and devices ----------------------------------------------------------------------


@dataclass
class DistContext:
    """This process's place among the evaluation processes (one per GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    def barrier(self) -> None:
        # Without a process group (one process playing a rank, as in tests) there is no one to wait for.
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()
            self.owns_group = False


def distributed_context(timeout_minutes: int = 180) -> DistContext:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun, accelerate launch) and join the process group.

    The long timeout covers ranks that finish their shard hours apart on slow generation.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        ctx.owns_group = True
    return ctx


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; anything else as given
    (checked: this machine must have it)."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return check_device(spec)


# --- prompts and problems -----------------------------------------------------------------------


def prompt_template(style: str) -> str | None:
    """The wrapper text for ``--prompt-style`` (None for ``plain``: no template at all).

    ``alpaca``: training's instruction wrapper; ``chat``: the bare question; a text containing
    ``{query}`` or a path to a file holding one: that wrapper.
    """
    if style == "plain":
        return None
    return {"alpaca": ALPACA_PROMPT, "chat": "{query}"}.get(style) or load_prompt_template(style)


def build_prompt_ids(tokenizer, question: str, template: str | None) -> list[int]:
    """Token ids of the prompt for ``question``.

    With a ``template``, the wrapped question is the user turn of the chat template (ending with
    the assistant header): exactly the prompt part of training records. Without one, the bare
    question with the tokenizer's own special tokens (BOS). Refuses a prompt that starts with two
    BOS tokens (the double-BOS pitfall of chat-templated evaluation).
    """
    if template is None:
        ids = list(tokenizer(question)["input_ids"])
    else:
        ids = list(render_prompt_ids(tokenizer, question, template=template))
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        raise BlocksftError(
            f"the prompt of {question[:40]!r} starts with two BOS tokens; BOS must come from the "
            "tokenizer or the chat template only, not from the question or the --prompt-style text"
        )
    return ids


def source_name(name: str | None) -> str | None:
    """A local path made absolute (so a resume from another folder matches); hub ids unchanged."""
    if name is None or not Path(name).exists():
        return name
    return str(Path(name).resolve())


def load_problems(config: EvalConfig) -> tuple[list, str]:
    """The task's first ``--limit`` problems (``Problem(id, question, solution, gold)``), checked for
    emptiness and ids, and the digest of every problem of the source.

    The whole source is read so that the digest, which a resumed results file must match, names the
    data and not how much of it this run takes: a larger ``--limit`` extends a file, changed data
    is refused.
    """
    loader = {"gsm8k": load_gsm8k, "math": load_math}[config.task]
    kwargs = {"split": config.split}
    if config.data is not None:
        kwargs["source"] = config.data
    problems = list(loader(**kwargs))
    where = config.data or f"the default {config.task} dataset"
    if not problems:
        raise BlocksftError(f"{where} holds no {config.task} problems; check --data/--split")
    ids = [str(p.id) for p in problems]
    if len(set(ids)) != len(ids):
        raise BlocksftError(f"{where}: problem ids are not unique, so results cannot be resumed or compared")
    return problems[: config.limit], problems_digest(problems)


def problems_digest(problems: list) -> str:
    """SHA-256 of the problems' ids, questions, solutions and gold answers, in order."""
    rows = [[str(p.id), p.question, p.solution, p.gold] for p in problems]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def check_question_text(problems: list, tokenizer, source: str) -> None:
    """Refuse a question that holds a special token's text: the model would read a control token."""
    pattern = special_text_pattern(tokenizer)
    for index, problem in enumerate(problems):
        problem_text = special_text_problem({"question": problem.question}, pattern)
        if problem_text:
            raise BlocksftError(f"row {index} of {source}: {problem_text}; remove it from the data")


# --- one run --------------------------------------------------------------------------------------


# Sampler settings that change how fast rows are made, not what they contain (the fixed-shape
# decoders give the loop's tokens): left out of the fingerprint, like the batch size, and recorded
# in the summary instead.
SPEED_SETTINGS = ("decode",)


def run_settings(config: EvalConfig, sampler, model: str, data_sha256: str) -> dict:
    """Everything that changes what a row contains: the fingerprint a resumed file must match. The
    data enters by its content digest, not its path: a file rewritten in place is other data."""
    decoding = {k: v for k, v in sampler.generate_kwargs().items() if k not in SPEED_SETTINGS}
    return {
        "model": source_name(model),
        "task": config.task,
        "data_sha256": data_sha256,
        "split": config.split,
        "prompt_style": config.prompt_style,
        "prompt_template": prompt_template(config.prompt_style),
        "seed": config.seed,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        **decoding,
    }


def software_versions() -> dict:
    """Versions that change generated text or scores."""
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "blocksft": blocksft.__version__,
        "cuda": torch.version.cuda,
    }
    for package in ("math-verify", "lm-eval"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def device_description(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"device": str(device), "gpu": torch.cuda.get_device_name(device)}
    return {"device": str(device), "gpu": None}


def run_record(
    config: EvalConfig, sampler, rows: list[dict], dist: DistContext, device: torch.device
) -> dict:
    """The summary's record of how the rows were made: run options, cost, machine, versions."""
    nfe = [int(r["nfe"]) for r in rows]
    return {
        "prompt_style": config.prompt_style,
        "seed": config.seed,
        "data": config.data,
        "limit": config.limit,
        "batch_size": config.batch_size,
        **{k: getattr(sampler, k) for k in SPEED_SETTINGS},
        "nfe_total": sum(nfe),
        "nfe_mean": sum(nfe) / max(1, len(nfe)),
        "generation_seconds": round(sum(float(r["seconds"]) for r in rows), 3),
        "world_size": dist.world_size,
        **device_description(device),
        "versions": software_versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def generate_rows(
    model,
    tokenizer,
    batch: list[tuple[int, Problem]],
    *,
    task: str,
    sampler: SamplerConfig,
    template: str | None,
    seed: int,
    settings_id: str,
    ids: SpecialIds,
) -> list[dict]:
    """Decode one batch of ``(index, problem)`` pairs and score the answers."""
    device = next(model.parameters()).device
    prompts = [build_prompt_ids(tokenizer, problem.question, template) for _, problem in batch]
    input_ids, attention_mask = left_pad(prompts, ids.pad)
    generator = torch.Generator(device=device).manual_seed(batch_seed(seed, batch[0][0]))
    start = time.perf_counter()
    with torch.inference_mode():
        out = generate(
            model,
            input_ids.to(device),
            attention_mask=attention_mask.to(device),
            mask_id=ids.mask,
            eos_token_ids=ids.stops,
            generator=generator,
            **sampler.generate_kwargs(),
        )
    texts = decode_answer(tokenizer, out.sequences, out.prompt_length, ids.stops)
    seconds = (time.perf_counter() - start) / len(batch)
    # Each row's own forwards where the decoder counts them (rows move on independently), else the batch's.
    nfe = out.row_nfe.tolist() if out.row_nfe is not None else [out.nfe] * len(batch)
    rows = []
    for (index, problem), prompt_ids, text, row_nfe in zip(batch, prompts, texts, nfe):
        scored = TASK_MODULES[task].score(text, problem.gold)
        rows.append(
            {
                "id": str(problem.id),
                "index": index,
                "question": problem.question,
                "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=False),
                "output": text,
                "gold": problem.gold,
                "extracted": scored["extracted"],
                "correct": scored["correct"],
                "nfe": int(row_nfe),
                "seconds": round(seconds, 4),
                "settings_id": settings_id,
            }
        )
    return rows


def evaluate_problems(
    model,
    tokenizer,
    problems: list[Problem],
    *,
    config: EvalConfig,
    sampler: SamplerConfig,
    model_name: str,
    output: str | Path,
    dist: DistContext | None = None,
    progress: bool = True,
    data_sha256: str | None = None,
) -> dict | None:
    """Evaluate ``problems`` into ``output``, resuming what is already there.

    Args:
        model, tokenizer: a loaded LLaDA-style model (on its device) and its tokenizer.
        problems: the task's problems, in dataset order.
        config: task, prompt style, batch size, seed...; ``sampler``: the decoding settings.
        model_name: what the rows and summary record as the model (its path or hub id).
        output: the results JSONL.
        dist: this process's rank among the evaluation processes (default: a single process).
        data_sha256: the digest of the whole data source (:func:`load_problems`); default: that of
            ``problems``.

    Returns:
        The summary (on rank 0; None on other ranks).
    """
    dist = dist or DistContext()
    output = Path(output)
    check_question_text(problems, tokenizer, config.data or f"the {config.task} data")
    ids = resolve_special_ids(tokenizer, model.config)
    settings = run_settings(config, sampler, model_name, data_sha256 or problems_digest(problems))
    sid = results.settings_id(settings)
    # One writer per results file (per rank): a second run on the same --output stops here.
    with claim(output.with_name(f".{output.name}.rank{dist.rank}.lock"), f"--output {output}"):
        wall_start = time.perf_counter()

        # === 1. What is left to do: skip every id already written (merged file or any part) ===
        own_part = results.part_path(output, dist.rank)
        results.repair_part(own_part)
        done = results.load_done(output, sid, settings)
        todo = [
            (i, p)
            for i, p in enumerate(problems)
            if i % dist.world_size == dist.rank and str(p.id) not in done
        ]
        mine_done = [r for r in done.values() if int(r["index"]) % dist.world_size == dist.rank]

        # === 2. Generate batch by batch, appending finished rows to this rank's part file ===
        model.eval()
        shard = dict(
            task=config.task, sampler=sampler, template=settings["prompt_template"], seed=config.seed
        )
        label = f"{config.task} {model_tag(model_name)} B={sampler.block_length}"
        with progress_bar(len(todo), label, unit="problem", disable=not progress or dist.rank != 0) as bar:
            tally = RunningAccuracy(TASK_MODULES[config.task].METRICS, mine_done)
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                rows = generate_rows(model, tokenizer, batch, settings_id=sid, ids=ids, **shard)
                results.append_rows(own_part, rows)
                tally.add(rows)
                bar.update(len(batch))
                bar.set_postfix(tally.postfix())

        # === 3. Rank 0 merges every part into the output and writes the summary ===
        dist.barrier()
        summary = None
        if dist.rank == 0:
            device = next(model.parameters()).device
            summary = merged_summary(config, sampler, problems, model_name, output, settings, dist, device)
            summary["wall_seconds_this_run"] = round(time.perf_counter() - wall_start, 3)
            results.write_summary(output, summary)
        dist.barrier()
        return summary


class RunningAccuracy:
    """The accuracy of the rows so far, per metric (for the progress bar)."""

    def __init__(self, metrics, rows_done: list[dict]):
        self.metrics, self.count = metrics, len(rows_done)
        self.correct = {m: sum(1 for r in rows_done if r["correct"].get(m)) for m in metrics}

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self.count += 1
            for m in self.metrics:
                self.correct[m] += bool(row["correct"][m])

    def postfix(self) -> dict[str, str]:
        return {m: f"{100 * self.correct[m] / self.count:.1f}%" for m in self.metrics}


def merged_summary(
    config: EvalConfig,
    sampler: SamplerConfig,
    problems: list[Problem],
    model_name: str,
    output: Path,
    settings: dict,
    dist: DistContext,
    device: torch.device,
) -> dict:
    """Merge every rank's part into ``output``; the summary of the selected problems' rows."""
    all_rows = results.merge_parts(output)
    selected = {str(p.id) for p in problems}
    rows = [r for r in all_rows if str(r["id"]) in selected]
    return {
        "task": config.task,
        "model": model_name,
        "output": str(output),
        "metrics": results.metric_summary(rows),
        "problems": len(problems),
        "rows_in_file": len(all_rows),
        "settings": settings,
        "settings_id": results.settings_id(settings),
        **run_record(config, sampler, rows, dist, device),
    }


# --- the command ----------------------------------------------------------------------------------


def run_eval(config: EvalConfig, sampler: SamplerConfig, *, progress: bool = True) -> list[dict]:
    """Evaluate every ``--model`` at every ``--block-length``; write rows, summaries and the grid.

    Returns:
        One ``{"model", "block_length", "output", "metrics"}`` cell per run (on every rank; metrics
        only on rank 0).
    """
    if not config.model:
        raise BlocksftError("--model is required (a checkpoint folder or hub id)")
    # Check every block length against the sampler before loading anything.
    samplers = {b: dataclasses.replace(sampler, block_length=b) for b in config.block_lengths}
    check_outputs(config, sampler)
    dist = distributed_context()
    try:
        device = resolve_device(config.device, dist.local_rank)
        problems, data_sha256 = load_problems(config)
        cells = []
        for model_name in config.model:
            tokenizer = load_tokenizer(model_name, trust_remote_code=config.trust_remote_code)
            model = load_model(
                model_name, dtype=config.dtype, trust_remote_code=config.trust_remote_code, device=device
            )
            for block_length, cell_sampler in samplers.items():
                output = output_path(config, model_name, block_length, sampler.gen_length, sampler.steps)
                summary = evaluate_problems(
                    model,
                    tokenizer,
                    problems,
                    config=config,
                    sampler=cell_sampler,
                    model_name=model_name,
                    output=output,
                    dist=dist,
                    progress=progress,
                    data_sha256=data_sha256,
                )
                cells.append(
                    {
                        "model": model_tag(model_name),
                        "block_length": block_length,
                        "output": str(output),
                        "metrics": summary["metrics"] if summary else None,
                    }
                )
                if summary and dist.rank == 0:
                    print(f"{output}: {results.format_accuracy(summary['metrics'])}", flush=True)
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if config.is_grid and dist.rank == 0:
            paths = results_grid(cells, config, sampler)
            print(f"grid: {', '.join(str(p) for p in paths.values())}", flush=True)
        return cells
    finally:
        dist.close()


def check_outputs(config: EvalConfig, sampler) -> None:
    """Refuse, before anything loads, results files (and a grid's tables) that cannot be written."""
    for model_name in config.model:
        for block_length in config.block_lengths:
            path = output_path(config, model_name, block_length, sampler.gen_length, sampler.steps)
            check_output_path(path, "--output", kind="file")
    if config.is_grid:
        check_output_path(f"{grid_stem(config)}.grid.md", "--output", kind="file")


def results_grid(cells: list[dict], config: EvalConfig, sampler: SamplerConfig) -> dict:
    """The grid's table and heatmap (``<stem>.grid.md`` ...), titled with the decoding settings."""
    title = (
        f"{config.task}: gen_length {sampler.gen_length}, {sampler.steps} steps "
        f"({sampler.steps / sampler.gen_length:g} per token), {sampler.remasking}, T={sampler.temperature:g}"
    )
    if sampler.confidence != "float64":
        title += f", confidence {sampler.confidence}"
    return write_grid(cells, grid_stem(config), title=title)
