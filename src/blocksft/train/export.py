"""Merged exports: LoRA folded into the base weights, saved as checkpoints that anyone can load.

A checkpoint folder holds sharded safetensors in the training dtype (bf16 on GPUs; the reference
merges in fp16), ``config.json`` with an ``auto_map``, our ``configuration_llada.py`` and
``modeling_llada.py`` (so plain transformers loads it with ``trust_remote_code=True``), the
tokenizer, and the adapter alone under ``adapter/``. It is written to a temporary folder and
renamed when complete, named ``<ckpt_dir>_stepNNNN`` like the reference's (then ``-v2``, ``-v3``
rather than overwriting).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from peft import PeftModel
from peft.tuners.lora import LoraLayer

import blocksft.model
from blocksft.errors import BlocksftError
from blocksft.model.loading import load_model
from blocksft.outputs import check_output_path
from blocksft.tokenizer import load_tokenizer

from .lora import PEFT_PREFIX

MODEL_FILES = ("configuration_llada.py", "modeling_llada.py")
AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
    "AutoModelForMaskedLM": "modeling_llada.LLaDAModelLM",
}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def export_dir(ckpt_dir: str | Path, step: int) -> Path:
    """``<ckpt_dir>_stepNNNN``, or ``..._stepNNNN-v2``, ``-v3``, ... if that exists already."""
    base = Path(f"{ckpt_dir}_step{step:04d}")
    candidate, version = base, 1
    while candidate.exists():
        version += 1
        candidate = base.with_name(f"{base.name}-v{version}")
    return candidate


def partial_name(output: Path, kind: str = "tmp") -> Path:
    """Where :func:`write_checkpoint` builds ``output`` (``kind`` tmp) or parks the folder it
    replaces (``old``): a hidden sibling, named after ``output`` and this process."""
    return output.with_name(f".{output.name}.{kind}-{os.getpid()}")


def remove_partial_exports(ckpt_dir: str | Path) -> list[Path]:
    """Delete the half-written merged checkpoints of a run (``.<name>_stepNNNN.tmp-PID`` and
    ``.old-PID`` folders), left when a process was killed while writing one. Call it only while
    holding the run's claim: then no live process is writing them. Returns what was deleted."""
    ckpt_dir = Path(ckpt_dir)
    parent = ckpt_dir.parent if ckpt_dir.parent.is_dir() else None
    if parent is None:
        return []
    stale = [
        p
        for pattern in (f".{ckpt_dir.name}_step*.tmp-*", f".{ckpt_dir.name}_step*.old-*")
        for p in parent.glob(pattern)
        if p.is_dir()
    ]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def lora_scalings(peft_model, adapter: str = "default") -> dict[str, float]:
    """LoRA scaling (alpha / r) per adapted module, keyed by the module's name in the base model."""
    return {
        name.removeprefix(PEFT_PREFIX): float(module.scaling[adapter])
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def merge_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor], scalings: Mapping[str, float], adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """Fold LoRA into the base weights of a PEFT model's full state dict, without touching the model.

    ``W' = W + scaling * (B @ A)``, computed in float32 and cast back to ``W``'s dtype, as PEFT's
    ``merge_and_unload`` does, but from a (possibly gathered) state dict, so a model in training is
    never modified. Returned tensors are on the CPU, under the base model's key names.

    Args:
        state_dict: the PEFT model's ``state_dict()`` (``base_model.model.`` prefixed keys).
        scalings: from :func:`lora_scalings`.
        adapter: the adapter name (PEFT's default is ``default``).
    """
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(PEFT_PREFIX)
        if ".base_layer." in name:
            module, leaf = name.rsplit(".base_layer.", 1)
            name = f"{module}.{leaf}"
            if leaf == "weight" and module in scalings:
                a = state_dict[f"{PEFT_PREFIX}{module}.lora_A.{adapter}.weight"]  # [r, in]
                b = state_dict[f"{PEFT_PREFIX}{module}.lora_B.{adapter}.weight"]  # [out, r]
                delta = (b.float() @ a.float()) * scalings[module]  # [out, in]
                tensor = (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)
        merged[name] = tensor.detach().to("cpu").contiguous()
    return merged


def write_checkpoint(
    output: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model_config,
    tokenizer=None,
    write_adapter: Callable[[Path], None] | None = None,
    replace: bool = False,
) -> Path:
    """Write a loadable checkpoint folder atomically (temporary folder, then rename).

    Args:
        output: the folder to create; it must not exist unless ``replace``.
        state_dict: merged weights under the published key names (no ``lora_`` keys).
        model_config: the model's ``LLaDAConfig``; saved with ``auto_map`` and the weights' dtype.
        tokenizer: saved beside the weights when given.
        write_adapter: called with ``<tmp>/adapter`` to save the adapter alone.
        replace: replace an existing ``output`` (the new folder is complete before the old one goes).
    """
    output = Path(output)
    if output.exists() and not replace:
        raise BlocksftError(f"checkpoint folder {output} exists already; choose another name or delete it")
    leftovers = [k for k in state_dict if "lora_" in k]
    if leftovers:
        raise BlocksftError(f"refusing to save unmerged LoRA weights ({leftovers[0]}, ...) in {output}")
    tmp = partial_name(output)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_torch_state_dict(dict(state_dict), tmp, max_shard_size="5GB", metadata={"format": "pt"})
        dtype = next(iter(state_dict.values())).dtype
        _write_config(tmp, model_config, dtype)
        model_dir = Path(blocksft.model.__file__).resolve().parent
        for name in MODEL_FILES:
            shutil.copyfile(model_dir / name, tmp / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if write_adapter is not None:
            write_adapter(tmp / "adapter")
        old = partial_name(output, "old")
        if output.exists():
            output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _write_config(folder: Path, model_config, dtype: torch.dtype) -> None:
    config = model_config.to_dict()
    config.pop("torch_dtype", None)
    config.update(auto_map=AUTO_MAP, architectures=["LLaDAModelLM"], dtype=DTYPE_NAMES.get(dtype, str(dtype)))
    config["use_cache"] = False
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_folder(adapter: Path) -> None:
    """Refuse a folder that is not a complete PEFT adapter before anything loads (PEFT would look
    for missing weights on the hub, with the folder's path as a repository name)."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise BlocksftError(f"--adapter {adapter}: no adapter_config.json there (a PEFT adapter folder)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BlocksftError(f"--adapter {config} is not valid JSON ({err}); is the folder complete?") from err
    if not any((adapter / name).is_file() for name in ADAPTER_WEIGHTS):
        raise BlocksftError(
            f"--adapter {adapter}: no adapter weights there ({' or '.join(ADAPTER_WEIGHTS)}); is the folder "
            "complete?"
        )


def merge_adapter(
    base: str, adapter: str | Path, output: str | Path, *, dtype: str = "auto", tokenizer: str | None = None
) -> Path:
    """Merge a PEFT LoRA adapter (trained here or elsewhere) into its base model and save it.

    Args:
        base: base model hub id or folder (e.g. ``GSAI-ML/LLaDA-8B-Instruct``).
        adapter: folder with ``adapter_config.json`` and the adapter weights.
        output: checkpoint folder to create.
        dtype: ``auto`` (the base checkpoint's dtype), ``bf16``, ``fp16`` or ``fp32``.
        tokenizer: tokenizer to save with it (default: the base model's).

    Returns:
        The written folder.
    """
    adapter = Path(adapter)
    check_adapter_folder(adapter)
    output = check_output_path(output, "--output", kind="folder")
    if output.exists():
        raise BlocksftError(f"--output {output} exists already; choose another folder or delete it")
    model = load_model(base, dtype=dtype)
    try:
        merged = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
    except Exception as err:  # safetensors, torch and PEFT errors alike: the adapter does not load
        first_line = (str(err).strip().splitlines() or [""])[0]
        if "size mismatch" in str(err):
            mismatch = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), first_line)
            raise BlocksftError(
                f"--adapter {adapter} does not fit --base {base} (it was trained on another model): "
                f"{mismatch}"
            ) from err
        raise BlocksftError(
            f"--adapter {adapter}: cannot load it ({type(err).__name__}: {first_line}); is the folder "
            "complete?"
        ) from err
    state = {k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}
    return write_checkpoint(
        output,
        state,
        model_config=merged.config,
        tokenizer=load_tokenizer(tokenizer or base),
        write_adapter=lambda folder: shutil.copytree(adapter, folder),
    )
