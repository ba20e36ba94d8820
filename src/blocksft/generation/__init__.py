"""Semi-autoregressive block decoding for masked diffusion LMs.

* :mod:`.sampler`: :func:`~.sampler.generate`, the loop (and the entry to the fixed-shape decoders);
* :mod:`.static`: fixed-shape decoding steps (CUDA graphs, ``torch.compile``);
* :mod:`.transfer`: the pure tensor pieces of a step (how many tokens to commit, which, predictions);
* :mod:`.output`: what a decode returns and what a step callback sees;
* :mod:`.text`: prompts to ids, generated rows to answers and streaming text;
* :mod:`.run`: ``blocksft generate`` (one prompt, optionally streamed).

The sampler's settings are :class:`blocksft.config.sampler.SamplerConfig`; the special ids it takes
come from :mod:`blocksft.special_tokens`.
"""
