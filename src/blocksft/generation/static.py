"""Block decoding with fixed shapes: a step without host syncs, rows that move on by themselves.

:func:`~blocksft.generation.sampler.generate` with ``decode="static"`` (or ``"graph"``,
``"compiled"``) runs here. The state of a decode lives in tensors whose shapes depend only on the
batch, the prompt width and the sampler's settings, and every step is the same sequence of tensor
operations on them:

1. each row's current block, ``idx = P + block[b] * K + arange(K)`` (``[B, K]``);
2. one forward: over the whole canvas (plain decoding, and a cache's first step of a block, which
   refills the row's cache), or over what a cache step recomputes (``prefix``: every generated
   position, ``dual``: the block), keys and values written into fixed-size cache buffers in place
   (:class:`~blocksft.model.modeling_llada.StaticCacheSpan`);
3. the predictions and their float64 confidences, the commits chosen with masks
   (:func:`~blocksft.generation.transfer.select_transfer`), written with ``scatter``;
4. without a cache, a row whose block has no mask left moves to its next block at once (per-row
   block pointers), so rows of a batch that finish their blocks at different steps (threshold
   decoding) do not wait for one another; a row past its last block (or stopped at EOS) idles until
   every row is done. With a cache the rows move to the next block together, as in the loop: a row
   starting a block needs a full forward to refill its cache, which every row then runs, and with
   rows at different blocks nearly every step would be one (at batch 32 and ~12 steps per block,
   some row starts a block at 94 % of the steps); one shared refill per block is cheaper.

No shape depends on the data and nothing reads a value back to the host inside a step, so each
kind of step (full, cached) can be captured once in a CUDA graph and replayed (``graph``), or
compiled whole with ``torch.compile(fullgraph=True, dynamic=False)`` (``compiled``). Between steps
the host reads two flags (is any row left, does the next step need a full forward): one small
transfer per step.

Every row decodes exactly as it would alone through the loop sampler (at temperature 0,
``low_confidence``, float64 confidence, no guidance): same tokens, same ``commit_step`` (counted per
row), and ``row_nfe`` its own forwards. A cache step's extra work: in ``prefix`` mode it recomputes
all ``G`` generated positions (the loop recomputes the block and what follows), and a step in which
any row refills its cache (``cache_refresh``) is a full forward for every row (each other row's keys
outside what it would recompute still come from its cache, so its result is unchanged).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from blocksft.generation.output import GenerateOutput
from blocksft.generation.transfer import (
    positions_from_mask,
    predict_block,
    select_transfer,
    transfer_schedule,
)
from blocksft.model.modeling_llada import StaticCacheSpan


@dataclass
class DecodeState:
    """The tensors a decode reads and writes in place (their addresses never change).

    Attributes:
        canvas: ``[B, L]`` prompt + generation.
        block: ``[B]`` each row's current block (``num_blocks`` when the row is done).
        step_in_block: ``[B]`` steps the row has taken in its current block.
        row_steps: ``[B]`` steps the row has taken in all (its NFE).
        commit_step: ``[B, G]`` the row's step that committed each generated token (-1: none).
        waiting: ``[B]`` bool, rows that finished their block and wait for the others (cache modes).
        status: ``[2]`` bool: any row still decoding; the next step needs a full forward.
        cache: per-layer ``(key, value)`` buffers ``[B, n_kv, L, hs]`` (cache modes), else empty.
    """

    canvas: torch.Tensor
    block: torch.Tensor
    step_in_block: torch.Tensor
    row_steps: torch.Tensor
    commit_step: torch.Tensor
    waiting: torch.Tensor
    status: torch.Tensor
    cache: list


class StaticDecoder:
    """One decode of a batch with fixed-shape steps (see the module docstring).

    Args:
        llada: our :class:`~blocksft.model.LLaDAModelLM` (unwrapped), in eval mode.
        prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts and their mask, on the model's device.
        gen_length, block_length, steps, mask_id, threshold, cache, cache_refresh: the sampler's.
        eos_token_ids, min_new_tokens, stop_at_eos, defer_eos: the sampler's EOS options.
    """

    def __init__(
        self,
        llada,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        gen_length: int,
        block_length: int,
        steps: int,
        mask_id: int,
        threshold: float | None,
        cache: str | None,
        cache_refresh: int | None,
        eos_token_ids: tuple[int, ...],
        min_new_tokens: int,
        stop_at_eos: bool,
        defer_eos: bool,
    ):
        self.llada, self.head = llada, llada.get_output_embeddings()
        batch, prompt_len = prompt_ids.shape
        device = prompt_ids.device
        self.prompt_len, self.gen_length, self.block_length = prompt_len, gen_length, block_length
        self.num_blocks = gen_length // block_length
        self.steps_per_block = steps // self.num_blocks
        self.mask_id, self.threshold = mask_id, threshold
        self.cache_mode, self.cache_refresh = cache, cache_refresh
        # With a cache, a row starting a block needs a full forward (its refill), which every row of
        # the batch then runs: rows moving on independently would make nearly every step a full
        # forward at larger batches, so with a cache the rows move to the next block together.
        self.rows_together = cache is not None
        self.min_new_tokens, self.stop_at_eos, self.defer_eos = min_new_tokens, stop_at_eos, defer_eos
        self.eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
        self.eos_fill = eos_token_ids[0] if eos_token_ids else mask_id
        self.is_eos = torch.zeros(self.head.weight.shape[0], dtype=torch.bool, device=device)  # [V]
        self.is_eos[self.eos] = True

        # === Constants of every step: the schedule, column indices ===
        width = prompt_len + gen_length
        self.per_step = torch.tensor(transfer_schedule(block_length, self.steps_per_block), device=device)
        self.offsets = torch.arange(block_length, device=device)  # [K]
        self.columns = torch.arange(width, device=device).expand(batch, width)  # [B, L]
        self.gen_columns = torch.arange(gen_length, device=device).expand(batch, gen_length)  # [B, G]

        # === The state, and the prompts' key mask and positions (rewritten in place by load) ===
        self.padded = not bool(prompt_mask.all())
        self.key_mask = torch.ones(batch, width, dtype=torch.long, device=device) if self.padded else None
        self.positions = torch.zeros(batch, width, dtype=torch.long, device=device)
        cache_buffers = []
        if cache is not None:
            config = llada.config
            shape = (batch, config.n_kv_heads, width, config.head_dim)
            dtype = self.head.weight.dtype
            cache_buffers = [
                tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in "kv")
                for _ in range(config.n_layers)
            ]
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        self.state = DecodeState(
            canvas=torch.full((batch, width), mask_id, dtype=torch.long, device=device),
            block=zeros.clone(),
            step_in_block=zeros.clone(),
            row_steps=zeros.clone(),
            commit_step=torch.full((batch, gen_length), -1, dtype=torch.long, device=device),
            waiting=torch.zeros(batch, dtype=torch.bool, device=device),
            status=torch.ones(2, dtype=torch.bool, device=device),
            cache=cache_buffers,
        )
        self._steps = None  # built (compiled, captured) at the first run, reused by later ones
        self.load(prompt_ids, prompt_mask)

    def fits(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> bool:
        """Whether :meth:`load` can take these prompts (same shape, padded or not alike)."""
        return prompt_ids.shape == self.state.canvas[:, : self.prompt_len].shape and self.padded == (
            not bool(prompt_mask.all())
        )

    def load(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Start a decode of new prompts in the same tensors (captured graphs stay valid). The
        cache buffers need no reset: every row's first step refills its cache."""
        if not self.fits(prompt_ids, prompt_mask):
            raise ValueError("these prompts do not fit this decoder's shapes")
        s, prompt_len = self.state, self.prompt_len
        key_mask = torch.cat([prompt_mask, prompt_mask.new_ones(len(prompt_mask), self.gen_length)], dim=1)
        if self.key_mask is not None:
            self.key_mask.copy_(key_mask)
        self.positions.copy_(positions_from_mask(key_mask))  # [B, L]
        s.canvas[:, :prompt_len].copy_(prompt_ids)
        s.canvas[:, prompt_len:].fill_(self.mask_id)
        for counter in (s.block, s.step_in_block, s.row_steps):
            counter.zero_()
        s.commit_step.fill_(-1)
        s.waiting.fill_(False)
        s.status.fill_(True)

    # ----- The two kinds of step --------------------------------------------------------------

    def full_step(self) -> None:
        """A step whose forward runs every canvas position (plain decoding; a cache's refill)."""
        self._step(full=True)

    def cached_step(self) -> None:
        """A step whose forward recomputes only what the cache mode recomputes."""
        self._step(full=False)

    def _step(self, *, full: bool) -> None:
        s = self.state
        # === 1. Each row's block ===
        active = s.block < self.num_blocks  # [B]
        stepping = active & ~s.waiting  # [B] rows that take this step
        block = s.block.clamp(max=self.num_blocks - 1)
        start = self.prompt_len + block * self.block_length  # [B] canvas column of the block
        idx = start[:, None] + self.offsets  # [B, K]
        x_block = s.canvas.gather(1, idx)  # [B, K]
        masked = (x_block == self.mask_id) & stepping[:, None]
        # === 2. Logits at the block ===
        logits = self.head(self._block_hidden(full, start, idx))  # [B, K, V]
        # === 3. Predict, choose with masks, write ===
        if self.min_new_tokens:
            early = (idx - self.prompt_len) < self.min_new_tokens  # [B, K]
            logits = logits.masked_fill(early[..., None] & self.is_eos, float("-inf"))
        tokens, scores = predict_block(logits, 0.0, "low_confidence", eos=self.eos, defer_eos=self.defer_eos)
        counts = self.per_step[s.step_in_block.clamp(max=self.steps_per_block - 1)]  # [B]
        transfer = select_transfer(scores, masked, counts, self.threshold)  # [B, K]
        written = torch.where(transfer, tokens, x_block)
        s.canvas.scatter_(1, idx, written)
        gen_idx = idx - self.prompt_len
        committed_at = torch.where(transfer, s.row_steps[:, None], s.commit_step.gather(1, gen_idx))
        s.commit_step.scatter_(1, gen_idx, committed_at)
        s.row_steps.add_(stepping.long())
        # === 4. Rows whose block is done move on (or stop after an EOS) ===
        taken = s.step_in_block + 1
        finished = stepping & (~(written == self.mask_id).any(-1) | (taken >= self.steps_per_block))  # [B]
        done = finished
        if self.rows_together:  # a finished row waits until every row has finished the block
            waiting = s.waiting | finished
            everyone = (waiting | ~active).all()  # a 0-d tensor: no host sync
            done = waiting & everyone
            s.waiting.copy_(waiting & ~everyone)
        next_block = block + 1
        if self.stop_at_eos:
            block_end = (gen_idx[:, -1] + 1)[:, None]  # [B, 1] generated columns before it are decoded
            generated = s.canvas[:, self.prompt_len :]  # [B, G] (a view: filled in place)
            is_eos = (generated[..., None] == self.eos).any(-1)  # [B, G]
            seen = (is_eos & (self.gen_columns < block_end)).any(-1)
            stop = done & seen
            generated.masked_fill_(stop[:, None] & (self.gen_columns >= block_end), self.eos_fill)
            next_block = torch.where(stop, self.num_blocks, next_block)
        s.block.copy_(torch.where(done, next_block, s.block))
        s.step_in_block.copy_(torch.where(done | ~active, 0, torch.where(stepping, taken, s.step_in_block)))
        still = s.block < self.num_blocks
        refill = still & ~s.waiting & self._refresh_due(s.step_in_block)
        s.status.copy_(torch.stack([still.any(), refill.any()]))

    def _refresh_due(self, step_in_block: torch.Tensor) -> torch.Tensor:
        """``[B]`` rows whose next step is a full forward (the loop sampler's rule, per row)."""
        if self.cache_mode is None:
            return torch.ones_like(step_in_block, dtype=torch.bool)
        if self.cache_refresh is None:
            return step_in_block == 0
        return step_in_block % self.cache_refresh == 0

    def _block_hidden(self, full: bool, start: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``[B, K, D]`` final hidden states at each row's block."""
        s, prompt_len = self.state, self.prompt_len
        if full:
            span = None
            if self.cache_mode is not None:
                # A row refilling its cache takes fresh keys everywhere; any other row only where its
                # own cache step would recompute, the rest from its cache (as when it decodes alone).
                refill = self._refresh_due(s.step_in_block)[:, None]
                span = StaticCacheSpan(self.columns, refill | self._recomputed(self.columns, start))
            hidden = self._hidden(s.canvas, self.positions, span)  # [B, L, D]
            return _gather_rows(hidden, idx)
        if self.cache_mode == "prefix":  # every generated position; fresh from the block on
            columns = self.columns[:, prompt_len:]  # [B, G]
            span = StaticCacheSpan(columns, self._recomputed(columns, start))
            hidden = self._hidden(s.canvas[:, prompt_len:], self.positions[:, prompt_len:], span)
            return _gather_rows(hidden, idx - prompt_len)
        span = StaticCacheSpan(idx, torch.ones_like(idx, dtype=torch.bool))  # dual: the block alone
        return self._hidden(s.canvas.gather(1, idx), self.positions.gather(1, idx), span)

    def _recomputed(self, columns: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Which ``columns`` a cache step of each row recomputes: the block and what follows
        (``prefix``) or the block (``dual``)."""
        after = columns >= start[:, None]
        if self.cache_mode == "prefix":
            return after
        return after & (columns < start[:, None] + self.block_length)

    def _hidden(self, ids, positions, span) -> torch.Tensor:
        out = self.llada(
            ids,
            attention_mask=self.key_mask,
            position_ids=positions,
            kv_cache=self.state.cache if span is not None else None,
            cache_span=span,
            return_logits=False,
            output_hidden_states=True,
        )
        return out.hidden_states

    # ----- Running ------------------------------------------------------------------------------

    def run(self, decode: str, *, compile_backend: str = "inductor"):
        """Decode to the end; returns a :class:`~blocksft.generation.output.GenerateOutput`.

        Args:
            decode: ``static`` (eager steps), ``graph`` (each kind of step captured in a CUDA graph
                on CUDA; eager elsewhere) or ``compiled`` (steps compiled whole with
                ``torch.compile(fullgraph=True, dynamic=False)``, then captured on CUDA).
            compile_backend: ``torch.compile``'s backend for ``compiled`` (tests: ``"eager"``).
        """
        if self._steps is None:
            self._steps = self._build_steps(decode, compile_backend)
        steps = self._steps
        batch, width = self.state.canvas.shape
        recomputed = {None: width, "prefix": self.gen_length, "dual": self.block_length}[self.cache_mode]
        nfe = forward_tokens = 0
        for _ in range(self.num_blocks * self.steps_per_block):  # every step moves every live row on
            any_left, needs_full = self.state.status.tolist()  # the one host read per step
            if not any_left:
                break
            full = self.cache_mode is None or needs_full
            steps[full]()
            nfe += 1
            forward_tokens += batch * (width if full else recomputed)
        s = self.state
        generated = s.canvas[:, self.prompt_len :]
        is_stop = torch.isin(generated, self.eos)  # [B, G]
        num_tokens = torch.where(is_stop.any(-1), is_stop.int().argmax(-1), self.gen_length)
        return GenerateOutput(
            sequences=s.canvas.clone(),
            nfe=nfe,
            prompt_length=self.prompt_len,
            num_tokens=num_tokens,
            commit_step=s.commit_step.clone(),
            forward_tokens=forward_tokens,
            row_nfe=s.row_steps.clone(),
        )

    def _build_steps(self, decode: str, compile_backend: str) -> dict:
        steps = {True: self.full_step, False: self.cached_step}
        if decode == "compiled":
            steps = {
                kind: torch.compile(fn, fullgraph=True, dynamic=False, backend=compile_backend)
                for kind, fn in steps.items()
            }
        if decode in ("graph", "compiled") and self.state.canvas.is_cuda:
            steps = {kind: _CapturedStep(fn) for kind, fn in steps.items()}
        return steps


class DecoderCache:
    """Fixed-shape decoders kept between calls of ``generate`` (``decoders=``): a call with the same
    model, batch shape and settings as an earlier one reuses its decoder, and its CUDA graphs are
    not captured again. Each decoder holds its cache buffers and graphs: ``size`` bounds how many
    are kept (the least recently used goes first)."""

    def __init__(self, size: int = 1):
        self.size = size
        self.decoders: OrderedDict = OrderedDict()

    def decoder(self, key: tuple, llada, prompt_ids, prompt_mask, build) -> StaticDecoder:
        """The kept decoder for ``key`` loaded with these prompts, or a new one from ``build()``."""
        found = self.decoders.pop(key, None)
        if found is not None and found.llada is llada and found.fits(prompt_ids, prompt_mask):
            found.load(prompt_ids, prompt_mask)
        else:
            found = build()
        self.decoders[key] = found
        while len(self.decoders) > self.size:
            self.decoders.popitem(last=False)
        return found


class _CapturedStep:
    """A step run eagerly the first time (on a side stream: it makes progress and warms up cuBLAS,
    kernels and compilation), then captured in a CUDA graph; every later call replays the graph.
    Capturing records the kernels without running them, so the state moves on only by the calls."""

    def __init__(self, step):
        self.step, self.graph = step, None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        self.graph = graph


def _gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b, k]]``: ``[B, T, D]`` at ``[B, K]`` -> ``[B, K, D]``."""
    return hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
