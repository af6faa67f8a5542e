"""The sentence-level QA cache.

The document-level cache (`lift_ray.layout.qa_cache_path`) saves a whole document's QA; the sentence
cache (`generator.sentence_cache`) saves each sentence's, so documents that share text (versions of one
report, NIAH haystacks that differ only by the needle, boilerplate) generate each shared sentence once.
Keys use `LiftConfig.generator_fingerprint()`, as the document cache does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from lift_ray.config import LiftConfig
from lift_ray.documents import validate_doc_id
from lift_ray.layout import sentence_cache_key
from lift_ray.storage import ObjectNotFound, Store, StoreError

log = logging.getLogger(__name__)

# Columns the generator adds to a sentence row; a cached sentence gets them back from the store.
GENERATED_COLUMNS = (
    "qa_json",
    "malformed",
    "retried",
    "attempts",
    "dropped",
    "ungrounded",
    "repaired",
    "unverified",
    "rewrites_dropped",
)


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class SentenceQACache:
    """The QA of single sentences in the store, keyed by sentence, paragraph and generator fingerprint.

    Objects live at `_sentence_qa/<namespace>/<key>.json` (`layout.sentence_cache_key`), outside the namespace's
    document folders (so listing a namespace's adapters does not walk them); a namespace never reads another's.
    """

    def __init__(self, store: Store, namespace: str, fingerprint: dict[str, Any]) -> None:
        self.store = store
        self.namespace = validate_doc_id(namespace, "namespace")  # fails here, not at the first sentence
        self.fingerprint = fingerprint
        self._fingerprint_digest = _digest(fingerprint)  # serialised once, not per sentence

    @classmethod
    def for_config(cls, config: LiftConfig) -> SentenceQACache:
        """The cache of `config`'s store and namespace for its generator."""
        return cls(Store.from_uri(config.storage.root), config.storage.namespace, config.generator_fingerprint())

    def key(self, row: dict[str, Any]) -> str:
        """Store key of one sentence row's QA."""
        parts = {"generator": self._fingerprint_digest, "context": row["context"], "sentence": row["sentence"]}
        return sentence_cache_key(self.namespace, _digest(parts)[:32])

    def lookup(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """For each row, the row completed from the cache (`cache_hit` true, no tokens spent), or None."""
        found: list[dict[str, Any] | None] = []
        for row in rows:
            key = self.key(row)
            try:
                found.append(_reused(row, self.store.read_json(key)))
            except ObjectNotFound:
                found.append(None)
            except (StoreError, KeyError, TypeError) as exc:  # a damaged or unreachable entry: generate again
                log.warning("sentence QA cache: unreadable %s (%s); generating again", key, exc)
                found.append(None)
        return found

    def save(self, results: list[dict[str, Any]]) -> None:
        """Store the generated columns of freshly generated rows."""
        for row in results:
            key = self.key(row)
            try:
                self.store.write_json(key, {c: row[c] for c in GENERATED_COLUMNS})
            except StoreError as exc:  # the cache only saves work; a failed write must not fail the batch
                log.warning("sentence QA cache: could not save %s (%s)", key, exc)


def _reused(row: dict[str, Any], generated: dict[str, Any]) -> dict[str, Any]:
    """`row` completed with QA generated for the same sentence elsewhere: no tokens spent on it."""
    return {**row, **{c: generated.get(c, 0) for c in GENERATED_COLUMNS}, "output_tokens": 0, "cache_hit": True}


def complete_with_cache(
    rows: list[dict[str, Any]], cache: SentenceQACache | None, generate: Callable[[list[dict]], list[dict]]
) -> list[dict[str, Any]]:
    """`generate(rows)`, but each sentence is generated once: found in `cache`, or repeated in `rows`.

    Rows taken from the cache or from an earlier row of the batch have `cache_hit` true and no output
    tokens; freshly generated rows are saved to the cache.
    """
    if cache is None:
        return generate(rows)
    found = cache.lookup(rows)
    keys = [cache.key(row) for row in rows]
    first_row: dict[str, int] = {}  # cache key -> the position of the row generated for it
    for position, (key, hit) in enumerate(zip(keys, found, strict=True)):
        if hit is None:
            first_row.setdefault(key, position)
    unique = sorted(first_row.values())
    generated = dict(zip(unique, generate([rows[p] for p in unique]), strict=True)) if unique else {}
    for row in generated.values():
        row["cache_hit"] = False
    cache.save(list(generated.values()))
    completed: list[dict[str, Any]] = []
    for position, (key, hit) in enumerate(zip(keys, found, strict=True)):
        if hit is not None:
            completed.append(hit)
        elif position in generated:
            completed.append(generated[position])
        else:
            completed.append(_reused(rows[position], generated[first_row[key]]))
    return completed
