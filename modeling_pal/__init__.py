"""PAL for Transformers: audio encoders feeding a decoder LLM via PLITS, LAL or both.

Importing the package registers `"pal"` with `AutoConfig`, `AutoModel`, `AutoModelForMultimodalLM` and
`AutoProcessor`, and the pipeline task `"audio-text-to-text"`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM

from .configuration_pal import PalConfig
from .modeling_pal import PalAudioFeatures, PalForConditionalGeneration, PalModel, PalPreTrainedModel

AutoConfig.register(PalConfig.model_type, PalConfig, exist_ok=True)
AutoModel.register(PalConfig, PalModel, exist_ok=True)
AutoModelForMultimodalLM.register(PalConfig, PalForConditionalGeneration, exist_ok=True)

__all__ = ["PalAudioFeatures", "PalConfig", "PalForConditionalGeneration", "PalModel", "PalPreTrainedModel"]
