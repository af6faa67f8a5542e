"""Candidate answers in a sentence, for answer-aware question generation.

A small generator asked for free-form QA pairs often drifts: it asks about the paragraph, repeats one
fact, or invents an answer. Asked instead "write a question whose answer is X" for a span X taken from
the sentence, it stays on the sentence, and the answer is grounded by construction. These heuristics
pick such spans: names (runs of capitalised words), numbers with the word they count, dates, quoted
titles, and reasons ("because ...").
"""

from __future__ import annotations

import re

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
    "million billion dozen half"
).split()
_NUMBER = rf"(?:\d[\d,.]*|(?:{'|'.join(_NUMBER_WORDS)})(?:[- ](?:{'|'.join(_NUMBER_WORDS)}))*)"
# A number, optionally with a unit or counted noun after it ("eleven months", "412 metres", "1887").
_COUNT = re.compile(rf"\b(?i:{_NUMBER})(?:\s+(?:per\s+)?[a-z]+)?\b")
_QUOTED = re.compile(r"[\"“]([^\"”]{2,60})[\"”]")
_REASON = re.compile(r"\b(?:because|since|so that|in order to)\s+([^.;!?]{6,120})", re.IGNORECASE)
# The rest of the sentence after its verb, for sentences with no name or number ("... had no bridge").
_PREDICATE = re.compile(
    r"\b(?:is|are|was|were|has|have|had|comes from|come from|called|named|became|becomes)\s+([^.;!?]{3,80})"
)
_WORD = re.compile(r"[\w'’-]+", re.UNICODE)
# Capitalised words that start sentences or clauses without naming anything.
_NOT_NAMES = frozenset(
    "a an the it its it's in on at of for to by with from and or but this that these those there then "
    "today every each some many most all when while after before during since until his her their our "
    "your my he she they we you i".split()
)
_STOP_AFTER_COUNT = frozenset("and or but of the a an in on at to by for with from as was were is are".split())


def _capitalised_runs(sentence: str) -> list[str]:
    tokens = [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(sentence)]
    runs: list[str] = []
    current: list[tuple[str, int, int]] = []

    def close() -> None:
        while current and current[0][0].lower() in _NOT_NAMES:
            current.pop(0)
        if current:
            runs.append(sentence[current[0][1] : current[-1][2]])
        current.clear()

    for index, (word, start, end) in enumerate(tokens):
        is_capitalised = word[:1].isupper()
        # "of"/"de" inside a name ("Festival of Lanterns") joins the run when a capitalised word follows.
        is_joiner = (
            word.lower() in {"of", "de", "von", "van", "del", "da"}
            and bool(current)
            and index + 1 < len(tokens)
            and tokens[index + 1][0][:1].isupper()
        )
        if is_capitalised or is_joiner:
            if index == 0 and word.lower() in _NOT_NAMES:
                continue
            current.append((word, start, end))
        else:
            close()
    close()
    # A lone capitalised first word is usually just the start of the sentence.
    first = tokens[0][0] if tokens else ""
    return [run for run in runs if not (run == first and " " not in run and sentence.startswith(first))]


def _counts(sentence: str) -> list[str]:
    spans = []
    for match in _COUNT.finditer(sentence):
        words = match.group(0).split()
        if len(words) > 1 and words[-1].lower() in _STOP_AFTER_COUNT:
            words = words[:-1]
        spans.append(" ".join(words))
    return spans


def candidate_answers(sentence: str, limit: int = 6) -> list[str]:
    """Short spans of `sentence` that make good answers, most specific first, without duplicates."""
    found = [
        *(m.group(1).strip() for m in _QUOTED.finditer(sentence)),
        *_capitalised_runs(sentence),
        *_counts(sentence),
        *(m.group(1).strip().rstrip(",") for m in _REASON.finditer(sentence)),
    ]
    if not found:
        found = [m.group(1).strip().rstrip(",") for m in _PREDICATE.finditer(sentence)][:1]
    spans: list[str] = []
    seen: set[str] = set()
    for span in found:
        key = span.lower()
        if len(span) < 2 or key in seen or key in _NOT_NAMES:
            continue
        seen.add(key)
        spans.append(span)
    return spans[:limit]
