"""`EvalConfig`: the settings of `lift-ray eval`, loadable from YAML like the other programs' configs.

The LIFT settings the adapters train with are its `lift` section (a `LiftConfig`). A LIFT config file is a
valid eval config too: LiftConfig's sections at the top level are read as `lift.<section>` (an explicit
`lift:` section wins over them), so `lift-ray eval --config lift.yaml` works as it did before eval had a
config of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lift_ray.config import RECITAL_TOKENS, LiftConfig
from lift_ray.documents import validate_doc_id
from lift_ray.eval.harness import DOCQA_DIR, METHOD_NAMES, Method, get_method
from lift_ray.eval.niah import DEFAULT_DEPTHS, NEEDLE_NAMES, Needle, get_needle

LIFT_KEYS = frozenset(LiftConfig.model_fields)


class EvalSection(BaseModel):
    """Base of the eval config's models: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NiahSettings(EvalSection):
    """Needle in a haystack: which cells, how many haystacks each, which methods, how haystacks are LIFTed."""

    lengths: list[int] = Field(default_factory=list, description="haystack lengths in tokens; empty: no NIAH")
    depths: list[float] = Field(
        default_factory=lambda: list(DEFAULT_DEPTHS), description="needle depths, 0 = first sentence, 1 = last"
    )
    instances: int = Field(1, ge=1, description="haystacks per cell (the paper uses 5)")
    needles: list[str] = Field(
        default_factory=lambda: list(NEEDLE_NAMES),
        description="needles hidden, by name (data/niah/needles.json: the paper's 'sandwich' and two unlike the "
        "niah preset's example); each gets the whole grid",
    )
    methods: list[str] | None = Field(None, description="methods that also run NIAH; None: every method run")
    overrides: list[str] = Field(
        default_factory=list,
        description="extra LIFT settings ('section.key=value') for LIFTing haystacks (the paper trains NIAH longer)",
    )

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, lengths: list[int]) -> list[int]:
        if any(length < 1 for length in lengths):
            raise ValueError(f"haystack lengths must be positive, got {lengths}")
        return lengths

    @field_validator("depths")
    @classmethod
    def _depths_in_range(cls, depths: list[float]) -> list[float]:
        if not depths or any(not 0 <= depth <= 1 for depth in depths):
            raise ValueError(f"depths must be between 0 and 1 (at least one), got {depths}")
        return depths

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str] | None) -> list[str] | None:
        for name in methods or []:
            get_method(name)
        return methods

    @field_validator("needles")
    @classmethod
    def _known_needles(cls, needles: list[str]) -> list[str]:
        if not needles:
            raise ValueError("give at least one needle")
        for name in needles:
            get_needle(name)
        return needles

    def needle_list(self) -> list[Needle]:
        """The needles to hide, in order."""
        return [get_needle(name) for name in self.needles]


class JudgeSettings(EvalSection):
    """The optional LLM judge (paper, Appendix C): any OpenAI-compatible endpoint."""

    url: str | None = Field(None, description="base URL up to /v1 (e.g. http://host:8000/v1); None: no judge")
    model: str = Field("gpt-4o", description="the judge's model name")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the judge's API key")


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` with `top`'s keys on top, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


class EvalConfig(EvalSection):
    """Every setting of an evaluation run (`lift-ray eval`), with the LiftConfig its adapters train with."""

    methods: list[str] = Field(
        default_factory=lambda: list(METHOD_NAMES), description="methods compared, in order (harness.METHODS)"
    )
    data: Path = Field(DOCQA_DIR, description="document-QA folder (<doc_id>.txt + questions.jsonl)")
    context_tokens: int = Field(
        1024, ge=1, description="document budget of the ICL methods (icl, lift_icl) in tokens: head and tail kept"
    )
    context_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="ICL methods read at most this share of each document's tokens (rounded down; the paper's "
        "long-document setting, e.g. 0.25), within context_tokens; None: context_tokens alone",
    )
    max_new_tokens: int = Field(48, ge=1, description="answer length limit")
    recite_max_new_tokens: int = Field(
        RECITAL_TOKENS,
        ge=1,
        description="length limit of the sentence a reciting method's adapter says first (`lift_recite`)",
    )
    general: bool = Field(True, description="ask the general-knowledge questions (the adapters' side effect)")
    answer_threads: int = Field(
        2, ge=1, description="torch threads of the answering model (1 copes far better with a busy shared machine)"
    )
    niah: NiahSettings = NiahSettings()
    judge: JudgeSettings = JudgeSettings()
    name: str = Field("eval", description="results file docs/results/<name>.json")
    plan_only: bool = Field(False, description="print what would be trained, then stop")
    lift: LiftConfig = Field(
        default_factory=LiftConfig,
        description="the LIFT settings of every method's adapters (each method then sets its own variant and "
        "storage namespace)",
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_sections_at_top_level(cls, data: Any) -> Any:
        """LiftConfig's sections at the top level (a LIFT config file) are read as the `lift` section."""
        if not isinstance(data, dict) or not LIFT_KEYS & set(data):
            return data
        lift = data.get("lift") or {}
        if isinstance(lift, BaseModel):
            lift = lift.model_dump(mode="json")
        outer = {key: value for key, value in data.items() if key not in LIFT_KEYS}
        return {**outer, "lift": _merged({key: data[key] for key in LIFT_KEYS & set(data)}, lift)}

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("give at least one method")
        for name in methods:
            get_method(name)
        return methods

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return validate_doc_id(name, what="results name")

    def method_list(self) -> list[Method]:
        """The methods to run, in order."""
        return [get_method(name) for name in self.methods]

    def niah_method_names(self) -> set[str]:
        """Names of the methods that also run NIAH (none without haystack lengths)."""
        if not self.niah.lengths:
            return set()
        return set(self.niah.methods if self.niah.methods is not None else self.methods)

    def to_yaml(self) -> str:
        """The config as YAML, for printing at the start of a run."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
