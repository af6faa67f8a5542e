"""Generator prompts, following the design of the LIFT paper's Appendix B in our own words.

Each sentence is shown with the paragraph that precedes it, and all m question-answer pairs for it
are asked for in one turn as JSON `{"qa_list": [{"question": ..., "answer": ...}, ...]}`, so the
generator sees the pairs it already wrote and can avoid repeating them. Few-shot examples are given
as earlier chat turns, which small instruct models follow more reliably than examples inside the
system message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = (
    "You write quiz questions about a text. You are given a paragraph and its last sentence. "
    "Write {m} different questions that can be answered from the last sentence alone, each with a short "
    "answer copied or closely paraphrased from that sentence. Name people, places and things explicitly "
    "instead of using pronouns, so each question makes sense on its own. Vary what the questions ask "
    "about: who, what, when, where, how many, why.\n"
    'Reply with JSON only, in the form {"qa_list": [{"question": "...", "answer": "..."}]}.'
)

USER_TEMPLATE = (
    "Paragraph:\n{paragraph}\n\nLast sentence:\n{sentence}\n\nWrite {m} question-answer pairs about the last sentence."
)


@dataclass(frozen=True)
class FewShotExample:
    """One worked example shown to the generator before the real request."""

    paragraph: str
    sentence: str
    pairs: list[tuple[str, str]]


SQUAD_EXAMPLES = [
    FewShotExample(
        paragraph="The Halvard Bridge opened in 1931 after six years of work.",
        sentence="Its central span, painted deep green, stretches 412 metres over the Kessel River.",
        pairs=[
            ("How long is the central span of the Halvard Bridge?", "412 metres"),
            ("Which river does the Halvard Bridge cross?", "the Kessel River"),
            ("What colour is the central span of the Halvard Bridge painted?", "deep green"),
            ("Which part of the Halvard Bridge is 412 metres long?", "its central span"),
            ("What does the central span of the Halvard Bridge stretch over?", "the Kessel River"),
        ],
    ),
    FewShotExample(
        paragraph="Marta Ibsen grew up on a sheep farm in the north.",
        sentence="In 1998 she founded Lumo Foods in Tromsdal with a loan of 40,000 kroner from her uncle.",
        pairs=[
            ("What company did Marta Ibsen found?", "Lumo Foods"),
            ("In which year did Marta Ibsen found Lumo Foods?", "1998"),
            ("Where was Lumo Foods founded?", "Tromsdal"),
            ("Who lent Marta Ibsen the money to start Lumo Foods?", "her uncle"),
            ("How much money did Marta Ibsen borrow to found Lumo Foods?", "40,000 kroner"),
        ],
    ),
]

NIAH_EXAMPLES = [
    FewShotExample(
        paragraph="Cities have their own rituals.",
        sentence=(
            "The best way to spend a rainy afternoon in Bergen is to order fish soup at a harbour cafe "
            "and then visit the old wooden houses of Bryggen."
        ),
        pairs=[
            (
                "What is the best way to spend a rainy afternoon in Bergen?",
                "Order fish soup at a harbour cafe and then visit the old wooden houses of Bryggen.",
            ),
        ],
    ),
]

PRESET_EXAMPLES: dict[str, list[FewShotExample]] = {"general": [], "squad": SQUAD_EXAMPLES, "niah": NIAH_EXAMPLES}


def _qa_json(pairs: list[tuple[str, str]]) -> str:
    return json.dumps({"qa_list": [{"question": q, "answer": a} for q, a in pairs]}, ensure_ascii=False)


def build_messages(
    context: str,
    sentence: str,
    m: int,
    preset: str = "squad",
    instruction: str = INSTRUCTION,
) -> list[dict[str, str]]:
    """The chat messages asking the generator for `m` QA pairs about `sentence` given its preceding `context`.

    `instruction` is the system message; every `{m}` in it becomes the number of pairs asked for.
    """
    if preset not in PRESET_EXAMPLES:
        raise ValueError(f"unknown prompt preset {preset!r}; choose one of {sorted(PRESET_EXAMPLES)}")
    messages = [{"role": "system", "content": instruction.replace("{m}", str(m))}]
    for example in PRESET_EXAMPLES[preset]:
        shown = example.pairs[:m]
        messages.append(
            {
                "role": "user",
                "content": USER_TEMPLATE.format(
                    paragraph=f"{example.paragraph} {example.sentence}", sentence=example.sentence, m=len(shown)
                ),
            }
        )
        messages.append({"role": "assistant", "content": _qa_json(shown)})
    paragraph = f"{context} {sentence}".strip()
    messages.append({"role": "user", "content": USER_TEMPLATE.format(paragraph=paragraph, sentence=sentence, m=m)})
    return messages


ANSWER_AWARE_INSTRUCTION = (
    "You write quiz questions about a text. You are given a sentence and an answer taken from it. Write one "
    "question about the sentence whose answer is exactly that answer. Name people, places and things "
    "explicitly instead of using pronouns, so the question makes sense on its own, and do not put the answer "
    "in the question.\n"
    'Reply with JSON only, in the form {"qa_list": [{"question": "...", "answer": "..."}]}.'
)

ANSWER_AWARE_TEMPLATE = "Paragraph:\n{paragraph}\n\nSentence:\n{sentence}\n\nAnswer:\n{answer}"


def build_answer_aware_messages(context: str, sentence: str, answer: str) -> list[dict[str, str]]:
    """The chat messages asking for one question about `sentence` whose answer is the span `answer`.

    Few-shot examples come from the squad preset's pairs; `context` is the sentence's preceding paragraph,
    shown so that a question about "it" can name what "it" is.
    """
    messages = [{"role": "system", "content": ANSWER_AWARE_INSTRUCTION}]
    for example in SQUAD_EXAMPLES:
        for question, example_answer in example.pairs[:2]:
            paragraph = f"{example.paragraph} {example.sentence}"
            content = ANSWER_AWARE_TEMPLATE.format(
                paragraph=paragraph, sentence=example.sentence, answer=example_answer
            )
            messages.append({"role": "user", "content": content})
            messages.append({"role": "assistant", "content": _qa_json([(question, example_answer)])})
    paragraph = f"{context} {sentence}".strip()
    messages.append(
        {"role": "user", "content": ANSWER_AWARE_TEMPLATE.format(paragraph=paragraph, sentence=sentence, answer=answer)}
    )
    return messages


VERIFY_INSTRUCTION = (
    "Answer the question about the text with a short answer copied from the text: a name, a number, a date "
    "or a few words. Reply with the answer only."
)


REWRITE_INSTRUCTION = (
    "Rewrite the question in other words: change its words and its sentence structure, keep its meaning, and do "
    "not answer it. Reply with the rewritten question only."
)
# Worked examples (invented, about nothing the evaluation asks): small generators copy the question without them.
REWRITE_EXAMPLES = (
    ("Who designed the lighthouse on Carrow Point?", "Which person drew up the plans for the Carrow Point lighthouse?"),
    ("In which year did the paper mill close?", "When was the paper mill shut down for good?"),
    ("How many workers did the glass factory employ?", "What was the size of the glass factory's workforce?"),
    ("What is the name of the ship that sank in 1911?", "Which vessel went down in 1911?"),
)


def build_rewrite_messages(question: str) -> list[dict[str, str]]:
    """The chat messages asking the generator to reword one of its questions (`generator.question_rewrites`),
    with `REWRITE_EXAMPLES` as earlier turns."""
    messages = [{"role": "system", "content": REWRITE_INSTRUCTION}]
    for asked, reworded in REWRITE_EXAMPLES:
        messages += [{"role": "user", "content": f"Question: {asked}"}, {"role": "assistant", "content": reworded}]
    return [*messages, {"role": "user", "content": f"Question: {question}"}]


def build_verify_messages(context: str, sentence: str, question: str, context_chars: int = 600) -> list[dict[str, str]]:
    """The chat messages asking the generator to answer its own `question` from the sentence and the end
    of its paragraph (a round-trip check of a generated pair)."""
    paragraph = f"{context[-context_chars:]} {sentence}".strip()
    return [
        {"role": "system", "content": VERIFY_INSTRUCTION},
        {"role": "user", "content": f"Text:\n{paragraph}\n\nQuestion:\n{question}"},
    ]


def load_instruction(template_file: Path | None) -> str:
    """The system instruction: the built-in one, or a user's template file (UTF-8 text, not empty)."""
    if template_file is None:
        return INSTRUCTION
    try:
        text = Path(template_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read generator.template_file {str(template_file)!r}: {exc}") from None
    if not text.strip():
        raise ValueError(f"generator.template_file {str(template_file)!r} is empty")
    return text


def qa_list_schema(m: int) -> dict:
    """JSON schema of the generator's answer, for engines with constrained decoding."""
    return {
        "type": "object",
        "properties": {
            "qa_list": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                    "required": ["question", "answer"],
                },
                "minItems": 1,
                "maxItems": m,
            }
        },
        "required": ["qa_list"],
    }
