"""Checking a checkpoint folder against its family's published parameter layout (names and shapes).

:func:`blocksft.model.loading.load_model` checks a local folder with :func:`verify_checkpoint`
before loading it into our class: transformers would fill a missing tensor with random values and
only warn.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from blocksft.errors import BlocksftError
from blocksft.families import ModelFamily, family_of_model_type


def checkpoint_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a folder's safetensors files, read from their headers."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise BlocksftError(f"no safetensors files in {folder}")
    shapes = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def verify_checkpoint(folder: str | Path, family: ModelFamily | None = None, config=None) -> None:
    """Raise :class:`BlocksftError` listing missing, unexpected and mis-shaped tensors, if any.

    ``family`` defaults to the one of the folder's config.json ``model_type``.
    """
    if family is None:
        model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
        family = family_of_model_type(model_type, str(folder))
    config = config or family.config_class.from_pretrained(folder)
    expected, found = family.parameter_shapes(config), checkpoint_shapes(folder)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:5])}")
    if wrong:
        problems.append("wrong shape: " + ", ".join(f"{k} {found[k]} != {expected[k]}" for k in wrong[:5]))
    if problems:
        raise BlocksftError(
            f"checkpoint {folder} does not match the {family.name} layout: " + "; ".join(problems)
        )
