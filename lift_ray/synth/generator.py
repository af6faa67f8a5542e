"""QA synthesis: sentence rows in, question-answer pairs out, through any ChatEngine."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lift_ray.config import GeneratorSettings, LiftConfig
from lift_ray.engines import ChatEngine, Generation, SamplingSettings, make_engine
from lift_ray.metrics import answer_in_question, answer_is_grounded, answers_agree, normalize_answer, snap_to_source
from lift_ray.synth.cache import SentenceQACache, complete_with_cache
from lift_ray.synth.parsing import parse_qa_output, parse_rewrite, validate_pairs
from lift_ray.synth.prompts import (
    build_answer_aware_messages,
    build_messages,
    build_rewrite_messages,
    build_verify_messages,
    load_instruction,
    qa_list_schema,
)
from lift_ray.synth.spans import candidate_answers

log = logging.getLogger(__name__)


class QAGenerator:
    """Writes up to m QA pairs per sentence; bad answers are retried, then counted and skipped, never fatal.

    Attempts run in stages (`stages()`), each over the sentences that still need pairs:

    - `context`: the paper's prompt, the sentence with its preceding paragraph, decoded with
      `settings.temperature`;
    - `alone` (with `retry_without_context`): the same prompt showing the sentence alone, greedy;
    - `aware` (unless `answer_aware` is off): one question per answer span picked from the sentence
      (`spans.candidate_answers`: names, numbers, dates), greedy; the span is the answer;
    - `sampled`: the free-form prompt again at `retry_temperature`, `samples_per_retry` candidates each.

    With `question_rewrites` = k, every kept pair then gets up to k rewordings of its question (sampled at
    `rewrite_temperature`, up to 2k tries); unusable replies are counted in `rewrites_dropped`.

    A sentence needs another stage while it has no pair whose answer comes from the sentence itself (or,
    without `require_grounded`, no pair at all); with `answer_aware="fill"` the `aware` stage also serves
    sentences with fewer than m pairs, so more of each sentence's facts get a question; with `"spans"` every
    sentence gets one question per span no pair answers yet, on top of its m free-form pairs. Pairs from all
    stages are merged (duplicates dropped) up to m. With `require_grounded`, a pair whose answer is not in
    the sentence or its paragraph is dropped as a hallucination and counted, and an answer that nearly
    copies a span of the sentence ("Tessar Dusk") is replaced by that span.
    """

    def __init__(self, engine: ChatEngine, settings: GeneratorSettings, seed: int = 0) -> None:
        self.engine = engine
        self.settings = settings
        self.seed = seed
        self.instruction = load_instruction(settings.template_file)

    def stages(self) -> list[str]:
        """The stage of each attempt, `max_retries + 1` of them."""
        stages = ["context"]
        if self.settings.retry_without_context:
            stages.append("alone")
        if self.settings.answer_aware != "off":
            stages.append("aware")
        stages += ["sampled"] * self.settings.max_retries
        return stages[: self.settings.max_retries + 1]

    def _sampling(self, stage: str, attempt: int) -> SamplingSettings:
        settings = self.settings
        schema = settings.qa_per_sentence if stage != "aware" else 1
        return SamplingSettings(
            max_new_tokens=settings.max_new_tokens if stage != "aware" else min(settings.max_new_tokens, 96),
            temperature=settings.retry_temperature if stage == "sampled" else settings.temperature,
            seed=self.seed + attempt,
            json_schema=qa_list_schema(schema) if settings.vllm.guided_json else None,
        )

    def _conversation(self, row: dict[str, Any], stage: str) -> list[dict[str, str]]:
        context = row["context"] if stage == "context" or not self.settings.retry_without_context else ""
        return build_messages(
            context, row["sentence"], self.settings.qa_per_sentence, self.settings.preset, self.instruction
        )

    def _done(self, row: dict[str, Any], pairs: list[tuple[str, str]]) -> bool:
        if not self.settings.require_grounded:
            return bool(pairs)
        return any(answer_is_grounded(answer, row["sentence"]) for _, answer in pairs)

    def _filter(self, result: dict[str, Any], row: dict[str, Any], generation: Generation) -> list[tuple[str, str]]:
        """Parse one free-form reply into pairs that pass validation and, if required, grounding."""
        result["output_tokens"] += generation.output_tokens
        if generation.error is not None:
            log.warning("generation failed for sentence %s: %s", row.get("sentence_index"), generation.error)
        parsed = parse_qa_output(generation.text, self.settings.qa_per_sentence, self.settings.max_answer_chars)
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
        return kept

    def _aware_pair(
        self, result: dict[str, Any], row: dict[str, Any], answer: str, generation: Generation
    ) -> list[tuple[str, str]]:
        """The question written for the span `answer`, paired with that span; [] if it is unusable."""
        result["output_tokens"] += generation.output_tokens
        parsed = parse_qa_output(generation.text, 1, self.settings.max_answer_chars)
        if not parsed.pairs:
            result["malformed"] += 1
            return []
        question = parsed.pairs[0][0]
        if answer_in_question(answer, question):  # the question gives its answer away
            result["dropped"] += 1
            return []
        return [(question, answer)]

    def _merge(
        self,
        result: dict[str, Any],
        row: dict[str, Any],
        current: list[tuple[str, str]],
        new: list[tuple[str, str]],
        extra: int = 0,
    ) -> list[tuple[str, str]]:
        # Pairs whose answer comes from the sentence itself go first, so they survive the cut to m (plus `extra`:
        # the span questions of answer_aware="spans", which come on top of the m free-form pairs).
        m = max(self.settings.qa_per_sentence, len(current)) + extra
        candidates = current + sorted(new, key=lambda p: not answer_is_grounded(p[1], row["sentence"]))
        merged, duplicates = validate_pairs(candidates, self.settings.max_answer_chars)
        result["dropped"] += duplicates + max(0, len(merged) - m)
        return merged[:m]

    def _verify(
        self,
        candidates: list[tuple[int, list[tuple[str, str]]]],
        rows: list[dict[str, Any]],
        results: list[dict[str, Any]],
        attempt: int,
    ) -> list[list[tuple[str, str]]]:
        """Keep the pairs whose question the generator, asked again with the text, answers with their answer."""
        flat = [(position, index, pair) for position, (index, new) in enumerate(candidates) for pair in new]
        kept: list[list[tuple[str, str]]] = [[] for _ in candidates]
        if not flat:
            return kept
        conversations = [
            build_verify_messages(rows[index]["context"], rows[index]["sentence"], question)
            for _, index, (question, _) in flat
        ]
        replies = self.engine.generate(conversations, SamplingSettings(max_new_tokens=32, seed=self.seed + attempt))
        for (position, index, pair), reply in zip(flat, replies, strict=True):
            results[index]["output_tokens"] += reply.output_tokens
            if answers_agree(reply.text, pair[1]):
                kept[position].append(pair)
            else:
                results[index]["unverified"] += 1
                results[index]["dropped"] += 1
        return kept

    def _open_spans(self, row: dict[str, Any], pairs: list[tuple[str, str]]) -> list[str]:
        """Answer spans of the sentence that no pair answers yet, as many as pairs are still missing."""
        answered = [normalize_answer(a) for _, a in pairs]
        spans = [
            span
            for span in candidate_answers(row["sentence"])
            if not any(normalize_answer(span) in a or a in normalize_answer(span) for a in answered if a)
        ]
        if self.settings.answer_aware == "spans":
            return spans
        return spans[: self.settings.qa_per_sentence - len(pairs)]

    def _rewrite(self, pairs: list[list[tuple[str, str]]], results: list[dict[str, Any]]) -> list[list[list[str]]]:
        """For each row's pairs, up to `question_rewrites` usable rewordings of their questions.

        Every try is sampled at `rewrite_temperature` (greedy, small generators copy the question), with a new seed
        each round, and only questions still short of rewordings are asked again: at most twice as many rounds as
        rewordings wanted."""
        wanted = self.settings.question_rewrites
        rewrites: list[list[list[str]]] = [[[] for _ in found] for found in pairs]
        flat = [(index, position) for index, found in enumerate(pairs) for position in range(len(found))]
        for attempt in range(2 * wanted):
            todo = [(i, p) for i, p in flat if len(rewrites[i][p]) < wanted]
            if not todo:
                break
            sampling = SamplingSettings(
                max_new_tokens=64, temperature=self.settings.rewrite_temperature, seed=self.seed + 101 + attempt
            )
            replies = self.engine.generate([build_rewrite_messages(pairs[i][p][0]) for i, p in todo], sampling)
            for (index, position), reply in zip(todo, replies, strict=True):
                question, answer = pairs[index][position]
                results[index]["output_tokens"] += reply.output_tokens
                rewrite = parse_rewrite(reply.text, question, answer)
                known = rewrites[index][position]
                if rewrite is None or normalize_answer(rewrite) in {normalize_answer(q) for q in known}:
                    results[index]["rewrites_dropped"] += 1
                else:
                    known.append(rewrite)
        return rewrites

    def generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For each sentence row, the same row plus `qa_json` and counters.

        Counters: `malformed` (outputs with no usable pair), `retried`, `attempts`, `dropped` (invalid,
        duplicate, surplus or ungrounded pairs), `ungrounded` (the last kind alone), `repaired` (answers
        snapped to the sentence's spelling), `unverified` (pairs that failed the round-trip check, also in
        `dropped`), `rewrites_dropped` (unusable rewordings of `question_rewrites`), `output_tokens`.
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
                "unverified": 0,
                "rewrites_dropped": 0,
                "output_tokens": 0,
            }
            for row in rows
        ]
        pairs: list[list[tuple[str, str]]] = [[] for _ in rows]
        m = self.settings.qa_per_sentence
        for attempt, stage in enumerate(self.stages()):
            pending = [i for i in range(len(rows)) if attempt == 0 or not self._done(rows[i], pairs[i])]
            if stage == "aware" and self.settings.answer_aware == "fill":
                pending = [i for i in range(len(rows)) if i in pending or len(pairs[i]) < m]
            elif stage == "aware" and self.settings.answer_aware == "spans":
                pending = list(range(len(rows)))
            # (row index, conversation, answer span for the aware stage)
            requests: list[tuple[int, list[dict[str, str]], str | None]] = []
            for index in pending:
                row = rows[index]
                if stage == "aware":
                    for span in self._open_spans(row, pairs[index]):
                        requests.append(
                            (index, build_answer_aware_messages(row["context"], row["sentence"], span), span)
                        )
                else:
                    copies = self.settings.samples_per_retry if stage == "sampled" else 1
                    requests += [(index, self._conversation(row, stage), None)] * copies
            if not requests:
                continue
            generations = self.engine.generate([c for _, c, _ in requests], self._sampling(stage, attempt))
            candidates: list[tuple[int, list[tuple[str, str]]]] = []
            for (index, _, span), generation in zip(requests, generations, strict=True):
                result, row = results[index], rows[index]
                result["attempts"] = attempt + 1
                result["retried"] = result["retried"] or (attempt > 0 and not self._done(row, pairs[index]))
                if span is None:
                    candidates.append((index, self._filter(result, row, generation)))
                else:
                    candidates.append((index, self._aware_pair(result, row, span, generation)))
            if self.settings.verify_answers:
                verified = self._verify(candidates, rows, results, attempt)
                candidates = [(index, kept) for (index, _), kept in zip(candidates, verified, strict=True)]
            for index, new in candidates:
                extra = len(new) if stage == "aware" and self.settings.answer_aware == "spans" else 0
                pairs[index] = self._merge(results[index], rows[index], pairs[index], new, extra)
        rewrites = self._rewrite(pairs, results) if self.settings.question_rewrites else [[]] * len(rows)
        for result, found, reworded in zip(results, pairs, rewrites, strict=True):
            items: list[dict[str, Any]] = [{"question": q, "answer": a} for q, a in found]
            for item, more in zip(items, reworded, strict=False):
                if more:
                    item["rewrites"] = more
            result["qa_json"] = json.dumps(items, ensure_ascii=False)
        return results


def _rows_from_batch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    return [{column: _plain(batch[column][i]) for column in columns} for i in range(size)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class QAGeneratorActor:
    """Builds the engine once; `rows` generates for a list of sentence rows, `__call__` for a Ray Data batch
    (`map_batches` runs it in generator actors)."""

    def __init__(self, config: LiftConfig) -> None:
        from lift_ray.models import resolve_base_model

        started = time.perf_counter()
        settings = config.generator
        model_dir = Path()
        if settings.engine != "openai":  # a remote server needs no local model
            model_dir = resolve_base_model(settings.model or config.model.base_model, Path(config.model.cache_dir))
        engine = make_engine(settings.engine, model_dir, settings, seed=config.seed)
        self.generator = QAGenerator(engine, settings, seed=config.seed)
        self.cache = SentenceQACache.for_config(config) if settings.sentence_cache else None
        log.info("generator %s ready in %.1f s", settings.engine, time.perf_counter() - started)

    def rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sentence rows in, the same rows with `qa_json` out (each sentence generated once, cache first)."""
        return complete_with_cache(rows, self.cache, self.generator.generate)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        results = self.rows(_rows_from_batch(batch))
        return {column: [r[column] for r in results] for column in results[0]} if results else {}
