"""Resuming a run: its last complete resumable state, and refusing to overwrite a run by mistake.

A resumable state is the Trainer's own checkpoint (``<ckpt_dir>_logs/checkpoints/checkpoint-N``:
adapter or weights, optimizer, scheduler, RNG of every rank, trainer state); blocksft writes its
marker into it last, once every rank has saved its part. Data order and the block schedule need
no saved state: both are functions of the config (see :mod:`blocksft.train.data`), which must be
the interrupted run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksft.config import config_to_dict
from blocksft.errors import BlocksftError

from .config import TrainConfig, config_differences
from .logs import say

# Written into a Trainer checkpoint folder once every rank has saved its part: --resume only
# trusts folders that have it.
COMPLETE_MARKER = "blocksft_state.json"


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def last_complete_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was finished (its marker file written last)."""
    done = [p for p in checkpoints_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return max(done, key=checkpoint_step, default=None)


def check_output(config: TrainConfig) -> Path | None:
    """Refuse to overwrite a previous run; with ``--resume``, find where to continue from."""
    logs = config.logs_dir
    saved_config = logs / "config.json"
    if not config.resume:
        if logs.exists() and any(logs.iterdir()):
            raise BlocksftError(
                f"{logs} exists already (a previous run): pass --resume to continue it, or choose "
                "another --ckpt-dir"
            )
        return None
    if saved_config.is_file():
        saved = json.loads(saved_config.read_text())["config"]
        differences = config_differences(saved, config_to_dict(config))
        if differences:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differences.items())
            raise BlocksftError(f"--resume: settings differ from the run in {logs}: {details}")
    found = last_complete_checkpoint(config.checkpoints_dir)
    if found is None:
        say(f"--resume: no complete resumable state under {config.checkpoints_dir}; starting from step 0")
    return found


def check_schedule(resume_from: Path, schedule, expected: dict) -> None:
    """Refuse to resume a state whose block schedule was made for other data or settings."""
    saved = json.loads((resume_from / COMPLETE_MARKER).read_text()).get("schedule")
    if saved is None:
        return
    schedule.load_state_dict(saved)  # raises, naming what differs
    if (saved["epoch"], saved["position"]) != (expected["epoch"], expected["position"]):
        raise BlocksftError(
            f"{resume_from}: its block schedule stopped at epoch {saved['epoch']} position "
            f"{saved['position']}, but this run's plan is at epoch {expected['epoch']} position "
            f"{expected['position']} there; "
            "resume with the same world size, batch size and gradient accumulation"
        )
