"""QA synthesis: sentence rows in, question-answer pairs out, through any ChatEngine."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lift_ray.config import GeneratorSettings, LiftConfig
from lift_ray.synth.engines import ChatEngine, SamplingSettings, make_engine
from lift_ray.synth.parsing import parse_qa_output
from lift_ray.synth.prompts import build_messages, load_instruction, qa_list_schema

log = logging.getLogger(__name__)


class QAGenerator:
    """Writes m QA pairs per sentence; a malformed answer is retried, then counted and skipped."""

    def __init__(self, engine: ChatEngine, settings: GeneratorSettings, seed: int = 0) -> None:
        self.engine = engine
        self.settings = settings
        self.seed = seed
        self.instruction = load_instruction(settings.template_file)

    def _sampling(self, attempt: int) -> SamplingSettings:
        settings = self.settings
        return SamplingSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature if attempt == 0 else settings.retry_temperature,
            seed=self.seed + attempt,
            json_schema=qa_list_schema(settings.qa_per_sentence) if settings.vllm.guided_json else None,
        )

    def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For each sentence row, the same row plus `qa_json` and counters (malformed, retried, dropped)."""
        m = self.settings.qa_per_sentence
        conversations = [
            build_messages(r["context"], r["sentence"], m, self.settings.preset, self.instruction) for r in rows
        ]
        results: list[dict[str, Any]] = [
            {**row, "qa_json": "[]", "malformed": 0, "retried": False, "dropped": 0, "output_tokens": 0} for row in rows
        ]
        pending = list(range(len(rows)))
        for attempt in range(self.settings.max_retries + 1):
            if not pending:
                break
            generations = self.engine.generate([conversations[i] for i in pending], self._sampling(attempt))
            still_pending = []
            for index, generation in zip(pending, generations, strict=True):
                result = results[index]
                result["output_tokens"] += generation.output_tokens
                result["retried"] = attempt > 0
                if generation.error is not None:
                    log.warning("generation failed for sentence %s: %s", result.get("sentence_index"), generation.error)
                parsed = parse_qa_output(generation.text, m, self.settings.max_answer_chars)
                result["dropped"] += parsed.dropped
                if parsed.malformed:
                    result["malformed"] += 1
                    still_pending.append(index)
                else:
                    result["qa_json"] = json.dumps(
                        [{"question": q, "answer": a} for q, a in parsed.pairs], ensure_ascii=False
                    )
            pending = still_pending
        return results


def _rows_from_batch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    return [{column: _plain(batch[column][i]) for column in columns} for i in range(size)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class QAGeneratorActor:
    """Ray Data `map_batches` wrapper: builds the engine once per actor, then generates per batch."""

    def __init__(self, config: LiftConfig) -> None:
        from lift_ray.models import resolve_base_model

        started = time.perf_counter()
        settings = config.generator
        model_dir = Path()
        if settings.engine != "openai":  # a remote server needs no local model
            model_dir = resolve_base_model(settings.model or config.model.base_model, Path(config.model.cache_dir))
        engine = make_engine(settings.engine, model_dir, settings, seed=config.seed)
        self.generator = QAGenerator(engine, settings, seed=config.seed)
        log.info("generator %s ready in %.1f s", settings.engine, time.perf_counter() - started)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = _rows_from_batch(batch)
        results = self.generator.generate(rows)
        return {column: [r[column] for r in results] for column in results[0]} if results else {}
