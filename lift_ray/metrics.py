"""Answer scoring: SQuAD-style normalisation, exact match and token F1, and groundedness of generated QA."""

from __future__ import annotations

import re
import string
from collections import Counter
from difflib import SequenceMatcher
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation) | {"“", "”", "‘", "’", "—", "–"}
# Words that carry no fact: an answer made only of these is not grounded in anything.
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for by with from and or but is are was were be been it its this that these those "
    "he she they his her their him them as which who whom what when where how why".split()
)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD evaluation's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (SQuAD's F1)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_score(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) of `prediction` against the best-matching of several gold answers."""
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


def answers_agree(reply: str, answer: str, min_f1: float = 0.5, extra_words: int = 6) -> bool:
    """Whether a model's `reply` to a question gives the pair's `answer`: token F1 ≥ `min_f1`, or the answer
    appears whole in a reply at most `extra_words` words longer (a reply that recites the whole sentence
    contains every answer, so it does not count)."""
    if token_f1(reply, answer) >= min_f1:
        return True
    normalized_reply, normalized_answer = normalize_answer(reply), normalize_answer(answer)
    if not normalized_answer:
        return False
    contained = f" {normalized_answer} " in f" {normalized_reply} "
    return contained and len(normalized_reply.split()) <= len(normalized_answer.split()) + extra_words


def answer_is_grounded(answer: str, sentence: str, min_overlap: float = 0.75) -> bool:
    """Whether an answer comes from the sentence: most of its content words appear in it.

    An answer found whole in the sentence (after normalisation) is grounded. Otherwise content words
    are the normalised tokens that are not function words; an answer with none (such as "it") is not
    grounded. Numbers count as content words.
    """
    normalized_answer, normalized_sentence = normalize_answer(answer), normalize_answer(sentence)
    content = [t for t in normalized_answer.split() if t not in _FUNCTION_WORDS]
    if not content:
        return False
    if f" {normalized_answer} " in f" {normalized_sentence} ":
        return True
    if not normalized_answer.isascii() and normalized_answer in normalized_sentence:
        return True  # scripts written without spaces between words
    sentence_tokens = set(normalized_sentence.split())
    found = sum(1 for token in content if token in sentence_tokens)
    return found / len(content) >= min_overlap


def answer_in_question(answer: str, question: str) -> bool:
    """Whether a question already holds its answer ("What is the name of the engineer Wilhelmina Sato?" /
    "Wilhelmina Sato"): such a pair teaches copying from the question, not a fact."""
    normalized_answer = normalize_answer(answer)
    return bool(normalized_answer) and f" {normalized_answer} " in f" {normalize_answer(question)} "


def grounded_sentence_fraction(rows: list[dict[str, Any]]) -> float:
    """Share of sentence rows with at least one pair whose answer is grounded in the sentence.

    Each row needs `sentence` and `pairs` (a list of {"question", "answer"}).
    """
    if not rows:
        return 0.0
    grounded = sum(
        1 for row in rows if any(answer_is_grounded(str(p["answer"]), str(row["sentence"])) for p in row["pairs"])
    )
    return grounded / len(rows)


def snap_to_source(answer: str, source: str, min_similarity: float = 0.85) -> str:
    """The span of `source` that `answer` nearly copies (small generators misspell names: "Tessar Dusk"
    for "Tessaro Dusk"), or `answer` unchanged when it is exact already or nothing is close enough.

    Windows of the answer's word count (and one more or less) are compared on lower-cased text.
    """
    words = answer.split()
    source_words = source.split()
    if not words or not source_words:
        return answer
    target = " ".join(words).lower()
    best, best_ratio = answer, min_similarity - 1e-9
    for size in {max(1, len(words) - 1), len(words), len(words) + 1}:
        for start in range(0, max(0, len(source_words) - size) + 1):
            span = " ".join(source_words[start : start + size]).strip(string.punctuation + "“”‘’")
            matcher = SequenceMatcher(None, target, span.lower())
            if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
                continue
            ratio = matcher.ratio()
            if ratio > best_ratio:
                best, best_ratio = span, ratio
    return answer if best.lower() == target else best
