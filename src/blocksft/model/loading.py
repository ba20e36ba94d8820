"""Loading LLaDA models from the hub or a local folder, onto a device this machine has.

Our own :class:`LLaDAModelLM` is used by default (a local folder is first checked against the
published layout, :func:`~blocksft.model.layout.verify_checkpoint`); the published remote code only
when asked (``trust_remote_code=True``), with the fix it needs under transformers 5.x (``use_cache``
set). Tokenizers load with :func:`blocksft.tokenizer.load_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from blocksft.errors import BlocksftError
from blocksft.tokenizer import check_model_source, source_error

from .configuration_llada import LLaDAConfig
from .layout import verify_checkpoint
from .modeling_llada import LLaDAModelLM

_DTYPES = {
    "auto": "auto",
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """Map ``"bf16"``/``"fp32"``/... (or a torch dtype) to what ``from_pretrained`` takes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise BlocksftError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def check_device(spec: str, flag: str = "--device") -> torch.device:
    """The torch device named by ``spec``, refused when this machine cannot run on it.

    Raises:
        BlocksftError: not a device name, no CUDA in this torch build or machine, or no such GPU.
    """
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise BlocksftError(f"{flag} {spec} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise BlocksftError(f"{flag} {spec}: {build}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise BlocksftError(f"{flag} {spec}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise BlocksftError(f"{flag} {spec}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise BlocksftError(f"{flag} {spec}: blocksft runs on cpu, cuda or mps")
    return device


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Load a LLaDA checkpoint (hub id or folder).

    Args:
        name_or_path: e.g. ``GSAI-ML/LLaDA-8B-Instruct`` or a local checkpoint folder.
        dtype: ``auto`` (the checkpoint's), ``bf16``, ``fp16``, ``fp32`` or a torch dtype.
        trust_remote_code: use the checkpoint's published modeling code instead of ours.
        device: move the model there after loading.
    """
    torch_dtype = resolve_dtype(dtype)
    check_model_source(name_or_path)
    try:
        model = _load(name_or_path, torch_dtype, trust_remote_code)
    except (BlocksftError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # hub, file, config and weight errors alike
        raise source_error("the model", name_or_path, err) from err
    if device is not None:
        model.to(device)
    return model


def _load(name_or_path: str, torch_dtype, trust_remote_code: bool) -> PreTrainedModel:
    if trust_remote_code:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=True)
        # The published remote code reads config.use_cache, which transformers 5.x no longer sets.
        config.use_cache = False
        model = AutoModel.from_pretrained(
            name_or_path, config=config, trust_remote_code=True, dtype=torch_dtype
        )
    else:
        config_dict, _ = LLaDAConfig.get_config_dict(name_or_path)
        model_type = config_dict.get("model_type")
        if model_type != LLaDAConfig.model_type:
            raise BlocksftError(
                f"{name_or_path} is a {model_type!r} checkpoint, not 'llada'; blocksft's own model "
                "class only covers LLaDA (pass --trust-remote-code to use the checkpoint's own code)"
            )
        folder = Path(name_or_path)
        if folder.is_dir() and any(folder.glob("*.safetensors")):  # headers only: cheap
            verify_checkpoint(folder)
        model = LLaDAModelLM.from_pretrained(name_or_path, dtype=torch_dtype)
    return model


__all__ = ["check_device", "load_model", "resolve_dtype"]
