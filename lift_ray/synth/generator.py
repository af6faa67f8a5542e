"""QA synthesis: sentence rows in, question-answer pairs out, through any ChatEngine."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lift_ray.config import GeneratorSettings, LiftConfig
from lift_ray.metrics import answer_is_grounded, snap_to_source
from lift_ray.synth.engines import ChatEngine, Generation, SamplingSettings, make_engine
from lift_ray.synth.parsing import parse_qa_output, validate_pairs
from lift_ray.synth.prompts import build_messages, load_instruction, qa_list_schema

log = logging.getLogger(__name__)


class QAGenerator:
    """Writes up to m QA pairs per sentence; bad answers are retried, then counted and skipped, never fatal.

    Attempt 0 follows the paper: the sentence with its preceding paragraph, decoded with
    `settings.temperature`. A sentence is retried while it has no usable pair (none parsed, or, with
    `require_grounded`, none whose answer comes from the sentence itself): attempt 1 shows the sentence
    alone (with `retry_without_context`), later attempts sample at `retry_temperature` with new seeds.
    Pairs from all attempts are merged (duplicates dropped) up to m. With `require_grounded`, a pair whose
    answer is not in the sentence or its paragraph is dropped as a hallucination and counted, and an
    answer that nearly copies a span of the sentence ("Tessar Dusk") is replaced by that span.
    """

    def __init__(self, engine: ChatEngine, settings: GeneratorSettings, seed: int = 0) -> None:
        self.engine = engine
        self.settings = settings
        self.seed = seed
        self.instruction = load_instruction(settings.template_file)

    def _sampling(self, attempt: int) -> SamplingSettings:
        settings = self.settings
        greedy_attempts = 2 if settings.retry_without_context else 1
        return SamplingSettings(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature if attempt < greedy_attempts else settings.retry_temperature,
            seed=self.seed + attempt,
            json_schema=qa_list_schema(settings.qa_per_sentence) if settings.vllm.guided_json else None,
        )

    def _conversation(self, row: dict[str, Any], attempt: int) -> list[dict[str, str]]:
        context = "" if attempt > 0 and self.settings.retry_without_context else row["context"]
        return build_messages(
            context, row["sentence"], self.settings.qa_per_sentence, self.settings.preset, self.instruction
        )

    def _done(self, row: dict[str, Any], pairs: list[tuple[str, str]]) -> bool:
        if not self.settings.require_grounded:
            return bool(pairs)
        return any(answer_is_grounded(answer, row["sentence"]) for _, answer in pairs)

    def _take(
        self, result: dict[str, Any], row: dict[str, Any], generation: Generation, current: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Parse one reply, filter it, and merge its pairs into the sentence's `current` pairs (at most m)."""
        m = self.settings.qa_per_sentence
        result["output_tokens"] += generation.output_tokens
        if generation.error is not None:
            log.warning("generation failed for sentence %s: %s", row.get("sentence_index"), generation.error)
        parsed = parse_qa_output(generation.text, m, self.settings.max_answer_chars)
        result["dropped"] += parsed.dropped
        kept = parsed.pairs
        if self.settings.require_grounded:
            paragraph = f"{row['context']} {row['sentence']}"
            repaired = [(q, snap_to_source(a, row["sentence"])) for q, a in kept]
            result["repaired"] += sum(1 for (_, a), (_, b) in zip(kept, repaired, strict=True) if a != b)
            kept = [(q, a) for q, a in repaired if answer_is_grounded(a, paragraph)]
            result["ungrounded"] += len(parsed.pairs) - len(kept)
            result["dropped"] += len(parsed.pairs) - len(kept)
        if not kept:
            result["malformed"] += int(parsed.malformed)
        # Pairs whose answer comes from the sentence itself go first, so they survive the cut to m.
        candidates = current + sorted(kept, key=lambda p: not answer_is_grounded(p[1], row["sentence"]))
        merged, duplicates = validate_pairs(candidates, self.settings.max_answer_chars)
        result["dropped"] += duplicates + max(0, len(merged) - m)
        return merged[:m]

    def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For each sentence row, the same row plus `qa_json` and counters.

        Counters: `malformed` (outputs with no usable pair), `retried`, `attempts`, `dropped` (invalid,
        duplicate, surplus or ungrounded pairs), `ungrounded` (the last kind alone), `repaired` (answers
        snapped to the sentence's spelling), `output_tokens`.
        """
        results: list[dict[str, Any]] = [
            {
                **row,
                "malformed": 0,
                "retried": False,
                "attempts": 0,
                "dropped": 0,
                "ungrounded": 0,
                "repaired": 0,
                "output_tokens": 0,
            }
            for row in rows
        ]
        pairs: list[list[tuple[str, str]]] = [[] for _ in rows]
        pending = list(range(len(rows)))
        for attempt in range(self.settings.max_retries + 1):
            if not pending:
                break
            sampling = self._sampling(attempt)
            copies = self.settings.samples_per_retry if sampling.temperature > 0 and attempt > 0 else 1
            conversations = [self._conversation(rows[i], attempt) for i in pending for _ in range(copies)]
            generations = self.engine.generate(conversations, sampling)
            still_pending = []
            for position, index in enumerate(pending):
                result, row = results[index], rows[index]
                result["attempts"] = attempt + 1
                result["retried"] = attempt > 0
                for generation in generations[position * copies : (position + 1) * copies]:
                    pairs[index] = self._take(result, row, generation, pairs[index])
                if not self._done(row, pairs[index]):
                    still_pending.append(index)
            pending = still_pending
        for result, found in zip(results, pairs, strict=True):
            result["qa_json"] = json.dumps([{"question": q, "answer": a} for q, a in found], ensure_ascii=False)
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
