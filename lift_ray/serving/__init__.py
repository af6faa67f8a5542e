"""Serving LIFTed documents: engines, the adapter cache tiers, the manifest index, tenants, the OpenAI API.

The modules imported here are plain classes and functions, no Ray. The Ray Serve layer is apart, imported
only by what starts the endpoint: `deployments.py` (the plain deployment classes `AdapterModel`, over
`AdapterService`, and `OpenAIIngress`) and `app.py` (`build_app(config)`, which wires them;
`serve/app.py` is its `serve run` entry). `openai_api.py` holds the request and reply schemas and the
server-sent events.
"""

from lift_ray.serving.adapters import AdapterFetcher, AdapterUnusable, SingleFlight, UnknownDocument
from lift_ray.serving.engines import Chunk, GenerationRequest, HFPeftEngine, VLLMLoRAEngine, make_serving_engine
from lift_ray.serving.index import ManifestIndex
from lift_ray.serving.service import (
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
