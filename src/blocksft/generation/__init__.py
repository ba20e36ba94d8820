"""Semi-autoregressive block decoding for masked diffusion LMs; the public API is :mod:`blocksft.generate`.

``options`` (the sampler's knobs and their checks) imports no torch, so that the command line can
build its parser without it; ``schedule`` holds the pure tensor pieces, ``sampler`` the loop and
``text`` the decoding of generated rows into answers.
"""
