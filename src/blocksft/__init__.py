"""blocksft: Blockwise SFT and full-sequence masked SFT for masked diffusion LMs (LLaDA).

``import blocksft`` is light (the command line starts fast). Our LLaDA implementation is
``blocksft.model`` (importing it registers it with the transformers Auto classes, after which
``AutoModelForCausalLM.from_pretrained(checkpoint)`` needs no ``trust_remote_code``); the layout of
the package is described in ``docs/ARCHITECTURE.md``.
"""

__version__ = "0.1.0"
