"""Resuming a run: its last complete resumable state, and refusing to overwrite a run by mistake.

A resumable state is the Trainer's own checkpoint (``<ckpt_dir>_logs/checkpoints/checkpoint-N``:
adapter or weights, optimizer, scheduler, RNG of every rank, trainer state); blocksft writes its
marker into it last, once every rank has saved its part. Data order and the block schedule need
no saved state: both are functions of the config (see :mod:`blocksft.train.items`), which must be
the interrupted run's; the marker records where in the plan the state was saved, to check that.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksft.config.flags import config_to_dict
from blocksft.config.train import CHANGEABLE_ON_RESUME, TrainConfig, config_differences
from blocksft.errors import BlocksftError

from .block_schedule import BlockSchedule
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


def saved_run(logs: Path) -> dict | None:
    """The ``config.json`` a run wrote into its logs folder (``None`` when there is none)."""
    path = logs / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BlocksftError(
            f"{path} is damaged ({err}); restore it, or start a new run (another --ckpt-dir)"
        ) from err
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise BlocksftError(f"{path} is not a blocksft run configuration; choose another --ckpt-dir")
    return saved


def check_output(config: TrainConfig, saved: dict | None = None) -> Path | None:
    """Refuse to overwrite a previous run; with ``--resume``, find where to continue from.

    Settings named in ``--allow-changes`` may differ from the run's (``saved``, its
    :func:`saved_run`); every other one must not.
    """
    logs = config.logs_dir
    if not config.resume:
        if logs.exists() and any(logs.iterdir()):
            raise BlocksftError(
                f"{logs} exists already (a previous run): pass --resume to continue it, or choose "
                "another --ckpt-dir"
            )
        return None
    if saved is not None:
        changed = resume_changes(saved, config)
        refused = {k: v for k, v in changed.items() if k not in config.allowed_changes}
        if refused:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            changeable = ", ".join(n for n in CHANGEABLE_ON_RESUME if n in refused)
            hint = (
                f"; to change {changeable} on purpose, add --allow-changes {changeable}" if changeable else ""
            )
            raise BlocksftError(
                f"--resume: settings differ from the run in {logs}: {details}; resume with the run's "
                f"settings{hint}"
            )
    found = last_complete_checkpoint(config.checkpoints_dir)
    if found is None:
        say(f"--resume: no complete resumable state under {config.checkpoints_dir}; starting from step 0")
    return found


def resume_changes(saved: dict, config: TrainConfig) -> dict[str, tuple]:
    """The settings of ``config`` that differ from the saved run's: name -> (old, new)."""
    return config_differences(saved["config"], config_to_dict(config))


def check_data_identity(saved: dict | None, data: dict, source: str) -> None:
    """Refuse to resume on other data than the run started with (compared by content, not path).

    Args:
        saved: the run's ``config.json`` (:func:`saved_run`).
        data: this run's :func:`blocksft.data.records.records_sha256` digests: ``records_sha256`` of
            the file's records, ``trained_records_sha256`` of those the run trains on (the first
            ``--max-samples``), which is what must match.
        source: the record file, for the message.
    """
    before = ((saved or {}).get("derived") or {}).get("data") or {}
    if not before.get("trained_records_sha256"):
        if saved is not None:
            say(
                f"--resume: the run's config.json has no data digest (an older blocksft); cannot check "
                f"{source}"
            )
        return
    if before["trained_records_sha256"] != data["trained_records_sha256"]:
        raise BlocksftError(
            f"--resume: {source} holds other records than the run was trained on (content sha256 "
            f"{before['trained_records_sha256'][:12]} when it started, {data['trained_records_sha256'][:12]} "
            "now); resume with the original file, or start a new run with another --ckpt-dir"
        )


def finished_run(config: TrainConfig) -> dict | None:
    """The budget of a run that ran to its end (``budget.json`` is written last), else ``None``."""
    path = config.logs_dir / "budget.json"
    return json.loads(path.read_text()) if config.resume and path.is_file() else None


def check_schedule(resume_from: Path, schedule: BlockSchedule, expected: tuple[int, int]) -> None:
    """Refuse to resume a state whose block schedule was made for other data or settings, or that
    stopped elsewhere in the plan than this run's plan is at that step (``expected``: its
    ``(epoch, position)``)."""
    saved = json.loads((resume_from / COMPLETE_MARKER).read_text()).get("schedule")
    if saved is None:
        return
    schedule.check_state(saved)  # raises, naming what differs
    if (saved["epoch"], saved["position"]) != expected:
        raise BlocksftError(
            f"{resume_from}: its block schedule stopped at epoch {saved['epoch']} position "
            f"{saved['position']}, but this run's plan is at epoch {expected[0]} position "
            f"{expected[1]} there; resume with the same world size, batch size and gradient accumulation"
        )
