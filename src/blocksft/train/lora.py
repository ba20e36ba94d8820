"""LoRA with PEFT: which layers, checked against the model before anything is wrapped.

The presets come from the model's family (:attr:`blocksft.families.ModelFamily.lora_presets`). The
reference script names Llama's layers (``q_proj k_proj v_proj o_proj gate_proj up_proj
down_proj``); PEFT silently adapts those a model has, which on LLaDA are ``q_proj k_proj v_proj
up_proj``. ``reference`` is those four on every family, so that a Dream run adapts what the paper
adapted (the script's list verbatim would match all seven of Qwen2's layers: ``all``). ``all`` is
every linear layer of the transformer layers. Targets are matched inside the layers only
(:attr:`~blocksft.families.ModelFamily.layer_prefix`), so an LM head sharing a name (LLaDA's
``model.transformer.ff_out``, 126,464 wide) is never adapted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from blocksft.errors import BlocksftError
from blocksft.families import ModelFamily, family_of_model

from .engine import full_numel

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
    """``model.transformer.blocks.{0..31}.{q_proj,v_proj}`` when every layer has the same modules."""
    pattern = re.compile(r"(.+?)\.(\d+)\.(.+)")
    parsed = [pattern.fullmatch(m) for m in modules]
    if not modules or not all(parsed) or len({p[1] for p in parsed}) != 1:
        return ", ".join(modules)
    layers = sorted({int(p[2]) for p in parsed})
    leaves = list(dict.fromkeys(p[3] for p in parsed))
    if len(modules) != len(layers) * len(leaves) or layers != list(range(layers[0], layers[-1] + 1)):
        return ", ".join(modules)
    return f"{parsed[0][1]}.{{{layers[0]}..{layers[-1]}}}.{{{','.join(leaves)}}}"


def resolve_lora_targets(spec: str, family: ModelFamily) -> tuple[str, ...]:
    """``reference``, ``all`` or a comma list of layer names -> a tuple of names."""
    if spec in family.lora_presets:
        return family.lora_presets[spec]
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise BlocksftError("--lora-targets is empty: use reference, all or a comma list of layer names")
    return names


def target_regex(names: tuple[str, ...], family: ModelFamily) -> str:
    """A regex PEFT matches against full module names: the named layers inside the layers only."""
    return family.layer_prefix + "(" + "|".join(re.escape(n) for n in names) + ")"


def matched_modules(model, names: tuple[str, ...], family: ModelFamily) -> dict[str, list[str]]:
    """For each name, the linear layers of ``model``'s layers it matches (refusing names matching none)."""
    matches: dict[str, list[str]] = {n: [] for n in names}
    for module_name, module in model.named_modules():
        leaf = family.layer_module(module_name)
        if leaf in matches and isinstance(module, torch.nn.Linear):
            matches[leaf].append(module_name)
    unmatched = [n for n, found in matches.items() if not found]
    if unmatched:
        raise BlocksftError(
            f"--lora-targets: {', '.join(unmatched)} match no linear layer of the model's layers; "
            f"{family.name}'s layers have {', '.join(family.linear_layers)} (or use reference / all)"
        )
    return matches


def apply_lora(model, *, targets: str, r: int, alpha: float, dropout: float):
    """Wrap ``model`` with LoRA adapters on the resolved targets.

    Args:
        model: a model of a known family (our class or one with the same module names).
        targets: ``reference``, ``all`` or a comma list of layer module names.
        r, alpha, dropout: LoRA rank, alpha (scaling alpha / r) and dropout.

    Returns:
        ``(peft_model, LoraReport)``.
    """
    family = family_of_model(model)
    names = resolve_lora_targets(targets, family)
    matched_modules(model, names, family)
    lora_config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(names, family), bias="none"
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
