"""Our Dream implementation, registered with the transformers Auto classes on import.

``model_type "Dream"`` resolves to :class:`DreamConfig` with ``AutoConfig`` and to
:class:`DreamModel` with ``AutoModel`` (as the published config's ``auto_map`` maps it) and
``AutoModelForCausalLM``, so a hub checkpoint loads with our class and no remote code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_dream import DreamConfig
from .modeling_dream import DreamModel, DreamOutput

AutoConfig.register(DreamConfig.model_type, DreamConfig, exist_ok=True)
for _auto_class in (AutoModel, AutoModelForCausalLM):
    _auto_class.register(DreamConfig, DreamModel, exist_ok=True)

__all__ = ["DreamConfig", "DreamModel", "DreamOutput"]
