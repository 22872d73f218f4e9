"""PAL for Transformers: audio encoders feeding a decoder LLM via PLITS, LAL or both.

Importing the package registers `"pal"` with `AutoConfig`, `AutoModel`, `AutoModelForMultimodalLM` and
`AutoProcessor`, and the pipeline task `"audio-text-to-text"`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMultimodalLM, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_pal import PalConfig
from .modeling_pal import PalAudioFeatures, PalForConditionalGeneration, PalModel, PalPreTrainedModel
from .pipeline_pal import PIPELINE_TASK, AudioTextToTextPipeline
from .processing_pal import PalProcessor

AutoConfig.register(PalConfig.model_type, PalConfig, exist_ok=True)
AutoModel.register(PalConfig, PalModel, exist_ok=True)
AutoModelForMultimodalLM.register(PalConfig, PalForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PalConfig, PalProcessor, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=AudioTextToTextPipeline, pt_model=AutoModelForMultimodalLM, type="multimodal"
)

__all__ = [
    "AudioTextToTextPipeline",
    "PalAudioFeatures",
    "PalConfig",
    "PalForConditionalGeneration",
    "PalModel",
    "PalPreTrainedModel",
    "PalProcessor",
]
