"""Model families: one file per family (:mod:`.llada`, :mod:`.dream`), found from a checkpoint.

A command never asks the user for the family: it is the model config's ``model_type``
(:func:`family_of_config`, :func:`family_of_model`), or, where there is only a tokenizer (prepare),
the family whose mask token the tokenizer holds (:func:`family_of_tokenizer`). A new family is one
new file defining a :class:`~.base.ModelFamily` and one entry in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksft.errors import BlocksftError
from blocksft.special_tokens import TokenNames, token_id

from .base import ModelFamily, ModelShape
from .dream import DREAM
from .llada import LLADA

FAMILIES: tuple[ModelFamily, ...] = (LLADA, DREAM)


def family_named(name: str) -> ModelFamily:
    """The family called ``name`` (``llada``, ``dream``)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise BlocksftError(f"unknown model family {name!r}; choose one of {', '.join(f.name for f in FAMILIES)}")


def family_of_model_type(model_type: str | None, source: str = "the checkpoint") -> ModelFamily:
    """The family whose config class has ``model_type`` (a checkpoint's config.json key)."""
    for family in FAMILIES:
        if family.model_type == model_type:
            return family
    known = ", ".join(repr(f.model_type) for f in FAMILIES)
    raise BlocksftError(
        f"{source} is a {model_type!r} checkpoint; blocksft's own model classes cover {known} "
        "(pass --trust-remote-code to use the checkpoint's own code)"
    )


def known_family(config) -> ModelFamily | None:
    """The family of a config's ``model_type``, or None when no family has it."""
    model_type = getattr(config, "model_type", None)
    return next((f for f in FAMILIES if f.model_type == model_type), None)


def family_of_config(config) -> ModelFamily:
    """The family of a model config (ours or a remote-code one with the same ``model_type``)."""
    return family_of_model_type(getattr(config, "model_type", None))


def unwrap_model(model):
    """The model behind DDP/DeepSpeed (``.module``) and PEFT (``get_base_model``) wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def token_names(config) -> TokenNames:
    """The special-token texts of a model config's family; LLaDA's for a remote-code model of no
    known family (its tokenizer's own mask token is read as well)."""
    known = known_family(config)
    return known.tokens if known else LLADA.tokens


def family_of_model(model) -> ModelFamily:
    """The family of a model (wrapped or not), from its config."""
    return family_of_config(unwrap_model(model).config)


def logits_shift(model) -> int:
    """The model's logits shift: its family's (from ``model_type``); 0 for a model of no known
    family (remote code, or one without a config), taken to predict each position from itself."""
    known = known_family(getattr(unwrap_model(model), "config", None))
    return known.logits_shift if known else 0


def own_model(model):
    """Our own model class behind ``model`` (wrappers looked through), or None for remote code."""
    base = unwrap_model(model)
    return base if isinstance(base, tuple(f.model_class for f in FAMILIES)) else None


def family_of_folder(folder: str) -> ModelFamily | None:
    """The family of a local checkpoint folder's config.json ``model_type``; None for a hub id, a
    folder without a readable config.json, or a ``model_type`` of no known family."""
    path = Path(folder) / "config.json"
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return next((f for f in FAMILIES if f.model_type == model_type), None)


def family_of_tokenizer(tokenizer) -> ModelFamily | None:
    """The family whose mask token ``tokenizer`` holds by text, or None (no mask token known)."""
    for family in FAMILIES:
        if token_id(tokenizer, family.tokens.mask) is not None:
            return family
    return None


__all__ = [
    "FAMILIES",
    "ModelFamily",
    "ModelShape",
    "family_named",
    "family_of_config",
    "family_of_model",
    "family_of_folder",
    "family_of_model_type",
    "family_of_tokenizer",
    "logits_shift",
    "own_model",
    "token_names",
    "unwrap_model",
]
