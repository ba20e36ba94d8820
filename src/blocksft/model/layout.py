"""The published LLaDA parameter layout (names and shapes), and checking a checkpoint folder against it.

:func:`blocksft.model.loading.load_model` checks a local folder with :func:`verify_checkpoint`
before loading it into our class: transformers would fill a missing tensor with random values and
only warn.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from blocksft.errors import BlocksftError

from .configuration_llada import LLaDAConfig

BLOCK_PARAMETERS = (
    "attn_norm",
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "ff_norm",
    "ff_proj",
    "up_proj",
    "ff_out",
)


def expected_parameter_shapes(config: LLaDAConfig) -> dict[str, tuple[int, ...]]:
    """The published LLaDA state-dict keys and shapes for ``config``."""
    d, hs, hidden = config.d_model, config.head_dim, config.mlp_hidden_size
    kv = config.n_kv_heads * hs
    block_shapes = {
        "attn_norm": (d,),
        "q_proj": (config.n_heads * hs, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "attn_out": (d, d),
        "ff_norm": (d,),
        "ff_proj": (hidden, d),
        "up_proj": (hidden, d),
        "ff_out": (d, hidden),
    }
    shapes = {"model.transformer.wte.weight": (config.embedding_size, d)}
    for i in range(config.n_layers):
        for name in BLOCK_PARAMETERS:
            shapes[f"model.transformer.blocks.{i}.{name}.weight"] = block_shapes[name]
    shapes["model.transformer.ln_f.weight"] = (d,)
    shapes["model.transformer.ff_out.weight"] = (config.embedding_size, d)
    return shapes


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


def verify_checkpoint(folder: str | Path, config: LLaDAConfig | None = None) -> None:
    """Raise :class:`BlocksftError` listing missing, unexpected and mis-shaped tensors, if any."""
    config = config or LLaDAConfig.from_pretrained(folder)
    expected, found = expected_parameter_shapes(config), checkpoint_shapes(folder)
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
        raise BlocksftError(f"checkpoint {folder} does not match the LLaDA layout: " + "; ".join(problems))
