"""blocksft: Blockwise SFT and full-sequence masked SFT for masked diffusion LMs (LLaDA).

``import blocksft`` is light (the command line starts fast); ``blocksft.LLaDAModelLM`` or
``import blocksft.model`` loads our LLaDA implementation and registers it with the transformers
Auto classes, after which ``AutoModelForCausalLM.from_pretrained(checkpoint)`` needs no
``trust_remote_code``.
"""

__version__ = "0.1.0"

_LAZY = {
    "LLaDAConfig": "blocksft.model",
    "LLaDAModelLM": "blocksft.model",
    "load_model": "blocksft.model.loading",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blocksft' has no attribute {name!r}")


__all__ = ["LLaDAConfig", "LLaDAModelLM", "__version__", "load_model"]
