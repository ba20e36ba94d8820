"""Our LLaDA and Dream implementations, registered with the transformers Auto classes on import.

``model_type "llada"`` and ``"Dream"`` resolve to our config classes with ``AutoConfig`` and to our
models with the Auto classes each model names in ``auto_classes`` (Dream: ``AutoModel``, as the
published config's ``auto_map`` maps it, and ``AutoModelForCausalLM``), so hub checkpoints load
with our classes and no remote code unless asked to (``trust_remote_code=True``).
"""

import transformers

from .configuration_dream import DreamConfig
from .configuration_llada import LLaDAConfig
from .modeling_dream import DreamModel, DreamOutput
from .modeling_llada import LLaDAModelLM, LLaDAOutput

for _model_class in (LLaDAModelLM, DreamModel):
    _config_class = _model_class.config_class
    transformers.AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    for _auto_name in _model_class.auto_classes:
        getattr(transformers, _auto_name).register(_config_class, _model_class, exist_ok=True)

__all__ = ["DreamConfig", "DreamModel", "DreamOutput", "LLaDAConfig", "LLaDAModelLM", "LLaDAOutput"]
