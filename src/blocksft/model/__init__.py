"""Our LLaDA implementation, registered with the transformers Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from .auto_dream import DreamConfig, DreamModel  # registers model_type "Dream"  # noqa: F401
from .configuration_llada import LLaDAConfig
from .modeling_llada import LLaDAModelLM, LLaDAOutput

AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
for _auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM):
    _auto_class.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)

__all__ = ["LLaDAConfig", "LLaDAModelLM", "LLaDAOutput"]
