"""Serving LIFTed documents: engines, the adapter cache tiers, the manifest index, tenants (no Ray here).

`serve/app.py` wraps `AdapterService` in Ray Serve deployments behind an OpenAI-compatible ingress.
"""

from lift_ray.serving.adapters import AdapterFetcher, AdapterUnusable, SingleFlight, UnknownDocument
from lift_ray.serving.engines import Chunk, GenerationRequest, HFPeftEngine, VLLMLoRAEngine, make_serving_engine
from lift_ray.serving.index import ManifestIndex
from lift_ray.serving.service import (
    AdapterChatModel,
    AdapterService,
    AnswerRequest,
    BadRequest,
    ChatAnswer,
    NotAttached,
    adapter_key,
    split_key,
)
from lift_ray.serving.tenants import Tenants, Unauthorized

__all__ = [
    "AdapterChatModel",
    "AdapterFetcher",
    "AdapterService",
    "AdapterUnusable",
    "AnswerRequest",
    "BadRequest",
    "ChatAnswer",
    "Chunk",
    "GenerationRequest",
    "HFPeftEngine",
    "ManifestIndex",
    "NotAttached",
    "SingleFlight",
    "Tenants",
    "Unauthorized",
    "UnknownDocument",
    "VLLMLoRAEngine",
    "adapter_key",
    "make_serving_engine",
    "split_key",
]
