"""Lenient parsing of generator output into validated question-answer pairs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_JSON_PAIR = re.compile(r'"question"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"answer"\s*:\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)
_LINE_PAIR = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question)\s*\d*\s*[:.]\s*(.+?)\s*\n\s*(?:A|Answer)\s*\d*\s*[:.]\s*(.+?)\s*(?=\n|$)",
    re.IGNORECASE,
)
MAX_QUESTION_CHARS = 300


@dataclass
class ParsedQA:
    """What one generator output yielded: valid pairs, and counts of what was wrong."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    malformed: bool = False
    dropped: int = 0


def _unescape(value: str) -> str:
    try:
        return json.loads(f'"{value}"')
    except json.JSONDecodeError:
        return value


def _pairs_from_json(text: str) -> list[tuple[str, str]] | None:
    start, end = text.find("{"), text.rfind("}")
    candidates = []
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    list_start, list_end = text.find("["), text.rfind("]")
    if 0 <= list_start < list_end:
        candidates.append(text[list_start : list_end + 1])
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            items = data.get("qa_list", data.get("qas", [data]))
        else:
            items = data
        if not isinstance(items, list):
            continue
        pairs = [
            (str(item.get("question", "")), str(item.get("answer", "")))
            for item in items
            if isinstance(item, dict) and "question" in item and "answer" in item
        ]
        if pairs:
            return pairs
    return None


def extract_pairs(text: str) -> list[tuple[str, str]]:
    """Every question-answer pair found in `text`: JSON, truncated JSON, or 'Question: / Answer:' lines."""
    text = _FENCE.sub("", text)
    pairs = _pairs_from_json(text)
    if pairs:
        return pairs
    pairs = [(_unescape(q), _unescape(a)) for q, a in _JSON_PAIR.findall(text)]
    if pairs:
        return pairs
    return [(q, a) for q, a in _LINE_PAIR.findall(text)]


def _normalise(value: str) -> str:
    return " ".join(value.split()).strip()


def validate_pairs(pairs: list[tuple[str, str]], max_answer_chars: int = 400) -> tuple[list[tuple[str, str]], int]:
    """Drop empty, duplicate, echoed and over-long pairs; return the kept pairs and how many were dropped."""
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    for question, answer in pairs:
        question, answer = _normalise(question), _normalise(answer)
        key = question.lower()
        if (
            not question
            or not answer
            or key in seen
            or question.lower() == answer.lower()
            or len(answer) > max_answer_chars
            or len(question) > MAX_QUESTION_CHARS
            or answer in ("...", "…")
        ):
            continue
        seen.add(key)
        kept.append((question, answer))
    return kept, len(pairs) - len(kept)


def parse_qa_output(text: str, max_pairs: int, max_answer_chars: int = 400) -> ParsedQA:
    """Parse one generator answer; `malformed` when no usable pair could be found in it."""
    found = extract_pairs(text)
    kept, dropped = validate_pairs(found, max_answer_chars)
    extra = max(0, len(kept) - max_pairs)
    return ParsedQA(pairs=kept[:max_pairs], malformed=not kept, dropped=dropped + extra)


_REWRITE_PREFIX = re.compile(r"^(?:\d+[.)]\s+)?(?:(?:(?:rewritten|new)\s+)?(?:question|q)\s*\d*\s*:)?", re.IGNORECASE)
_DECORATION = " \"'`*"


def parse_rewrite(text: str, question: str, answer: str) -> str | None:
    """The rewritten question in a generator's reply, or None when it is unusable: no question on the first line,
    the same words as `question`, or `answer` given away in it."""
    from lift_ray.metrics import answer_in_question, normalize_answer

    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    rewrite = _REWRITE_PREFIX.sub("", lines[0].strip(_DECORATION), count=1).strip(_DECORATION)
    if not rewrite.endswith("?") or not 8 <= len(rewrite) <= MAX_QUESTION_CHARS:
        return None
    if normalize_answer(rewrite) == normalize_answer(question) or answer_in_question(answer, rewrite):
        return None
    return rewrite
