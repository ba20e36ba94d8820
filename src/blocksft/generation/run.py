"""``blocksft generate``: decode one prompt with the block sampler and print the answer, optionally
showing the canvas fill in (:class:`CanvasStream`)."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import torch

from blocksft.config.generate import GenerateConfig
from blocksft.errors import BlocksftError
from blocksft.families import logits_shift, token_names
from blocksft.generation.output import GenerateStep
from blocksft.generation.sampler import generate
from blocksft.generation.text import decode_answer, encode_prompt, render_canvas
from blocksft.model.loading import check_device, load_model
from blocksft.special_tokens import (
    resolve_special_ids,
    special_text_pattern,
    token_id,
    tokenizer_mask_id,
)
from blocksft.tokenizer import load_tokenizer


def run_generate(cfg: GenerateConfig) -> str:
    """Load ``cfg.model``, decode ``cfg.prompt`` and return the answer (the stream, if asked, on stdout)."""
    source = str(Path(cfg.model).expanduser()) if cfg.model.startswith("~") else cfg.model
    device = check_device(cfg.device) if cfg.device else ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    check_prompt_text(cfg.prompt, tokenizer, chat=cfg.chat)
    model = load_model(source, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, device=device)
    model.eval()
    ids = resolve_special_ids(tokenizer, model.config, mask_id=cfg.mask_id, names=token_names(model.config))
    prompt_ids = torch.tensor([encode_prompt(tokenizer, cfg.prompt, chat=cfg.chat)], dtype=torch.long)
    shift = logits_shift(model)
    if shift and prompt_ids.shape[1] == 0:
        raise BlocksftError(
            f"--prompt {cfg.prompt!r} encodes to no tokens: this model predicts token i from the output "
            f"at i - {shift}, so it needs at least one prompt token (give some text, or pass --chat)"
        )
    stream = CanvasStream(tokenizer, ids.mask, prompt_ids.shape[1]) if cfg.stream else None
    out = generate(
        model,
        prompt_ids,
        **cfg.generate_kwargs(),
        mask_id=ids.mask,
        eos_token_ids=ids.stops,
        generator=torch.Generator(device=device).manual_seed(cfg.seed),
        callback=stream,
    )
    if stream is not None:
        stream.close()
    return decode_answer(tokenizer, out.sequences, out.prompt_length, ids.stops)[0]


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

    def __call__(self, step: GenerateStep) -> None:
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
    if token_id(tokenizer, token) == tokenizer_mask_id(tokenizer):
        raise BlocksftError(
            f"--prompt holds {token!r}, the mask token: a prompt cannot hold masks (the sampler "
            "fills only the generated part); remove it"
        )
