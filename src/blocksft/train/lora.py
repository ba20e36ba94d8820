"""LoRA on LLaDA with PEFT: which layers, checked against the model before anything is wrapped.

The reference script names Llama's layers (``q_proj k_proj v_proj o_proj gate_proj up_proj
down_proj``); on LLaDA only ``q_proj k_proj v_proj up_proj`` exist, and PEFT silently adapts just
those. ``reference`` is that effective set; ``all`` is every linear layer of the transformer blocks.
The name ``ff_out`` is both the blocks' MLP output and the LM head (``model.transformer.ff_out``,
126,464 wide): targets are matched inside the blocks only, so the head is never adapted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from blocksft.errors import BlocksftError

from .engine import full_numel

BLOCK_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
REFERENCE_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj")
TARGET_PRESETS = {"reference": REFERENCE_TARGETS, "all": BLOCK_LINEAR_LAYERS}
BLOCK_PREFIX = r"model\.transformer\.blocks\.\d+\."
PEFT_PREFIX = "base_model.model."  # what PEFT puts before the base model's module names


@dataclass(frozen=True)
class LoraReport:
    """What LoRA attached to: module names and parameter counts."""

    targets: tuple[str, ...]
    modules: tuple[str, ...]
    trainable_params: int
    total_params: int

    def summary(self) -> str:
        share = 100.0 * self.trainable_params / max(1, self.total_params)
        return (
            f"LoRA on {len(self.modules)} modules: {compact_module_list(self.modules)}; "
            f"trainable parameters {self.trainable_params:,} of {self.total_params:,} ({share:.2f}%)"
        )


def compact_module_list(modules: tuple[str, ...]) -> str:
    """``model.transformer.blocks.{0..31}.{q_proj,v_proj}`` when every block has the same layers."""
    pattern = re.compile(r"model\.transformer\.blocks\.(\d+)\.([^.]+)")
    parsed = [pattern.fullmatch(m) for m in modules]
    if not modules or not all(parsed):
        return ", ".join(modules)
    blocks = sorted({int(p[1]) for p in parsed})
    leaves = list(dict.fromkeys(p[2] for p in parsed))
    if len(modules) != len(blocks) * len(leaves) or blocks != list(range(blocks[0], blocks[-1] + 1)):
        return ", ".join(modules)
    return f"model.transformer.blocks.{{{blocks[0]}..{blocks[-1]}}}.{{{','.join(leaves)}}}"


def resolve_lora_targets(spec: str) -> tuple[str, ...]:
    """``reference``, ``all`` or a comma list of layer names -> a tuple of names."""
    if spec in TARGET_PRESETS:
        return TARGET_PRESETS[spec]
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise BlocksftError("--lora-targets is empty: use reference, all or a comma list of layer names")
    return names


def target_regex(names: tuple[str, ...]) -> str:
    """A regex PEFT matches against full module names: the named layers inside the blocks only."""
    return BLOCK_PREFIX + "(" + "|".join(re.escape(n) for n in names) + ")"


def matched_modules(model, names: tuple[str, ...]) -> dict[str, list[str]]:
    """For each name, the block linear layers of ``model`` it matches (refusing names matching none)."""
    pattern = re.compile(BLOCK_PREFIX + r"(?P<leaf>[^.]+)")
    matches: dict[str, list[str]] = {n: [] for n in names}
    for module_name, module in model.named_modules():
        found = pattern.fullmatch(module_name)
        if found and found["leaf"] in matches and isinstance(module, torch.nn.Linear):
            matches[found["leaf"]].append(module_name)
    unmatched = [n for n, found in matches.items() if not found]
    if unmatched:
        raise BlocksftError(
            f"--lora-targets: {', '.join(unmatched)} match no linear layer of the model's blocks; "
            f"LLaDA's block layers are {', '.join(BLOCK_LINEAR_LAYERS)} (or use reference / all)"
        )
    return matches


def apply_lora(model, *, targets: str, r: int, alpha: float, dropout: float):
    """Wrap ``model`` with LoRA adapters on the resolved targets.

    Args:
        model: a LLaDA model (our class or one with the same module names).
        targets: ``reference``, ``all`` or a comma list of block layer names.
        r, alpha, dropout: LoRA rank, alpha (scaling alpha / r) and dropout.

    Returns:
        ``(peft_model, LoraReport)``.
    """
    names = resolve_lora_targets(targets)
    matched_modules(model, names)
    lora_config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(names), bias="none"
    )
    peft_model = get_peft_model(model, lora_config)
    return peft_model, lora_report(peft_model, names)


def lora_report(peft_model, names: tuple[str, ...]) -> LoraReport:
    """Module names that carry LoRA, and trainable / total parameter counts."""
    modules = tuple(
        name.removeprefix(PEFT_PREFIX) for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)
    )
    trainable = sum(full_numel(p) for p in peft_model.parameters() if p.requires_grad)
    total = sum(full_numel(p) for p in peft_model.parameters())
    return LoraReport(targets=names, modules=modules, trainable_params=trainable, total_params=total)
