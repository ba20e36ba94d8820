"""A run's settings that take ``auto``, once resolved: what was asked, what runs, and why.

The speed settings (:mod:`blocksft.train.speed`) and the engine's (:mod:`blocksft.train.engine`)
are resolved into :class:`Choice` records when a run starts; each group is printed in one line and
recorded in ``config.json`` (``derived.speed``, ``derived.engine``).
"""

from __future__ import annotations

from dataclasses import dataclass

LABELS = {
    "torch_compile": "torch.compile",
    "gradient_checkpointing": "gradient checkpointing",
    "group_by_length": "length grouping",
    "dtype": "dtype",
    "deepspeed": "DeepSpeed",
}


@dataclass(frozen=True)
class Choice:
    """One resolved setting: what was asked, what runs, and why."""

    setting: str
    asked: str
    ran: str
    why: str

    def text(self) -> str:
        return f"{LABELS[self.setting]} {self.ran} ({self.why})"

    def as_dict(self) -> dict:
        return {"asked": self.asked, "ran": self.ran, "why": self.why}


def replace_choice(choice: Choice, ran: str, why: str) -> Choice:
    """The same setting, now running as ``ran`` for the reason ``why``."""
    return Choice(choice.setting, choice.asked, ran, why)


def format_choices(choices: list[Choice], heading: str = "speed") -> str:
    """The one line a run prints about a group of settings."""
    return f"{heading}: " + ", ".join(choice.text() for choice in choices)
