"""`blocksft generate`: decode one prompt with LLaDA's semi-autoregressive sampler and print the answer.

blocksft generate --model GSAI-ML/LLaDA-8B-Instruct --chat --prompt "What is 12 * 7?"
blocksft generate --model ./ckpt_step0200 --chat --prompt "..." --threshold 0.9 --cache prefix --stream
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from blocksft.config import add_dataclass_arguments, build_config
from blocksft.generation.options import SamplerConfig


@dataclass
class GenerateConfig(SamplerConfig):
    """``blocksft generate``: the sampler's knobs plus what to load and how to show it."""

    model: str | None = field(
        default=None, metadata={"help": "checkpoint: hub id or local folder (required)"}
    )
    prompt: str | None = field(default=None, metadata={"help": "the prompt text (required)"})
    chat: bool = field(
        default=False,
        metadata={
            "help": "wrap the prompt as a user turn with the tokenizer's chat template (Instruct models)"
        },
    )
    seed: int = field(default=42, metadata={"help": "seed of the sampling generator (temperature, random)"})
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": "weights dtype (auto: the checkpoint's)"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, cpu, cuda:1, ... (none: cuda if available)"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "use the checkpoint's own modeling code (no caches then)"}
    )
    mask_id: int | None = field(
        default=None,
        metadata={"help": "mask token id (none: the model config's, checked against the tokenizer)"},
    )
    stream: bool = field(default=False, metadata={"help": "show the canvas filling in, block by block"})

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required (a hub id or a checkpoint folder)")
        if self.prompt is None:
            raise ValueError("--prompt is required")
        if self.stream and self.decode != "loop":
            raise ValueError(f"--stream shows every step: it needs --decode loop, not {self.decode}")


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="YAML file with these options; flags given here override it")
    add_dataclass_arguments(parser, GenerateConfig)


class CanvasStream:
    """A ``generate`` callback that shows row 0's generated canvas, masks as a glyph.

    On a terminal the canvas is redrawn in place after every step (ANSI cursor moves); otherwise
    one line is printed per finished block, newlines shown as ``↵``.
    """

    def __init__(self, tokenizer, mask_id: int, prompt_len: int, out=None):
        self.tokenizer, self.mask_id, self.prompt_len = tokenizer, mask_id, prompt_len
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.lines_drawn = 0

    def __call__(self, step) -> None:
        from blocksft.generation.text import render_canvas

        if not (self.tty or step.block_done):
            return
        text = render_canvas(self.tokenizer, step.canvas[0, self.prompt_len :].tolist(), self.mask_id)
        if self.tty:
            self._redraw(f"[block {step.block + 1}, step {step.step + 1}, NFE {step.nfe}]\n{text}")
        else:
            print(f"block {step.block + 1}: {text.replace(chr(10), '↵')}", file=self.out, flush=True)

    def _redraw(self, text: str) -> None:
        self.close()
        self.out.write(text + "\n")
        self.out.flush()
        columns = max(1, shutil.get_terminal_size().columns)
        self.lines_drawn = sum(max(1, math.ceil(len(line) / columns)) for line in text.split("\n"))

    def close(self) -> None:
        """Erase the drawing (terminal only), so that the answer prints in its place."""
        if self.tty and self.lines_drawn:
            self.out.write(f"\x1b[{self.lines_drawn}F\x1b[J")
            self.out.flush()
            self.lines_drawn = 0


def check_prompt_text(prompt: str, tokenizer, *, chat: bool) -> None:
    """Refuse special-token text where it would not be read as text.

    With ``--chat`` the prompt is the content of one user turn: any special token in it would
    become a control token inside the turn. Without it the prompt is raw text the user lays out
    (special tokens allowed), except the mask token, which the sampler cannot take in a prompt.
    """
    from blocksft.errors import BlocksftError
    from blocksft.tokenizer import MASK, mask_token_id, special_text_pattern

    found = special_text_pattern(tokenizer).search(prompt)
    if found is None:
        return
    token = found.group(0)
    if chat:
        raise BlocksftError(
            f"--prompt holds {token!r}, a special token of the tokenizer: with --chat the prompt is the text "
            "of one user turn and would be cut by it; remove it, or drop --chat and write the whole raw "
            "prompt yourself"
        )
    if tokenizer.convert_tokens_to_ids(token) == mask_token_id(tokenizer):
        raise BlocksftError(
            f"--prompt holds {token!r}, the mask token ({MASK}): a prompt cannot hold masks (the sampler "
            "fills only the generated part); remove it"
        )


def run(args) -> int:
    cfg = build_config(GenerateConfig, args, getattr(args, "config", None))
    import torch

    from blocksft.generate import decode_answer, generate, stop_token_ids
    from blocksft.generation.text import encode_prompt, resolve_mask_id, tokenizer_pad_id
    from blocksft.model.loading import check_device, load_model, load_tokenizer

    source = str(Path(cfg.model).expanduser()) if cfg.model.startswith("~") else cfg.model
    device = check_device(cfg.device) if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    check_prompt_text(cfg.prompt, tokenizer, chat=cfg.chat)
    model = load_model(source, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)
    model.eval()
    mask_id = resolve_mask_id(model.config, tokenizer, cfg.mask_id, pad_id=tokenizer_pad_id(tokenizer))
    prompt_ids = torch.tensor([encode_prompt(tokenizer, cfg.prompt, chat=cfg.chat)])
    stream = CanvasStream(tokenizer, mask_id, prompt_ids.shape[1]) if cfg.stream else None
    out = generate(
        model,
        prompt_ids,
        **cfg.generate_kwargs(),
        mask_id=mask_id,
        eos_token_ids=stop_token_ids(tokenizer),
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        callback=stream,
    )
    if stream is not None:
        stream.close()
    print(decode_answer(tokenizer, out.sequences, out.prompt_length)[0])
    return 0
