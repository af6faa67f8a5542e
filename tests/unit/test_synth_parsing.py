import json

import pytest

from lift_ray.synth.parsing import extract_pairs, parse_qa_output, parse_rewrite, validate_pairs
from lift_ray.synth.prompts import build_messages, load_instruction, qa_list_schema


def test_valid_json_qa_list_is_parsed():
    text = json.dumps(
        {"qa_list": [{"question": "Who founded it?", "answer": "Ilsa"}, {"question": "When?", "answer": "1887"}]}
    )
    parsed = parse_qa_output(text, max_pairs=5)
    assert parsed.pairs == [("Who founded it?", "Ilsa"), ("When?", "1887")]
    assert not parsed.malformed


def test_fenced_json_with_chatter_is_parsed():
    text = 'Sure! Here you go:\n```json\n{"qa_list": [{"question": "Q1?", "answer": "A1"}]}\n```\nHope it helps.'
    assert parse_qa_output(text, 5).pairs == [("Q1?", "A1")]


def test_truncated_json_keeps_the_complete_pairs():
    text = '{"qa_list": [{"question": "Where is Tessaro?", "answer": "in the mountains"}, {"question": "Who is Tom'
    parsed = parse_qa_output(text, 5)
    assert parsed.pairs == [("Where is Tessaro?", "in the mountains")]
    assert not parsed.malformed


def test_question_answer_lines_are_parsed():
    text = (
        "Question1: What colour is the glass?\nAnswer1: violet\n"
        "Question2: Who directs the factory?\nAnswer2: Tomas Quell"
    )
    assert extract_pairs(text) == [("What colour is the glass?", "violet"), ("Who directs the factory?", "Tomas Quell")]


def test_garbage_is_malformed_not_an_exception():
    for text in ["", "I cannot help with that.", "{not json at all", '{"qa_list": "nope"}', "[1, 2, 3]"]:
        parsed = parse_qa_output(text, 5)
        assert parsed.malformed and parsed.pairs == []


def test_validation_drops_empty_duplicate_echoed_and_long_pairs():
    pairs = [
        ("Who?", "Anna"),
        ("who?", "Anna again"),
        ("", "x"),
        ("What?", ""),
        ("Same", "same"),
        ("Long?", "x" * 500),
        ("Fine?", "yes"),
    ]
    kept, dropped = validate_pairs(pairs, max_answer_chars=400)
    assert kept == [("Who?", "Anna"), ("Fine?", "yes")]
    assert dropped == 5


def test_more_pairs_than_asked_are_cut_and_counted():
    text = json.dumps({"qa_list": [{"question": f"Q{i}?", "answer": f"A{i}"} for i in range(8)]})
    parsed = parse_qa_output(text, max_pairs=5)
    assert len(parsed.pairs) == 5 and parsed.dropped == 3


def test_prompt_holds_paragraph_sentence_and_m_in_one_turn():
    messages = build_messages("Earlier text.", "Target sentence here.", m=7, preset="general")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "7" in messages[0]["content"] and "qa_list" in messages[0]["content"]
    assert "Earlier text. Target sentence here." in messages[1]["content"]
    assert "Last sentence:\nTarget sentence here." in messages[1]["content"]


def test_few_shot_presets_add_example_turns_that_parse():
    messages = build_messages("", "A sentence.", m=3, preset="squad")
    assistant_turns = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(assistant_turns) == 2
    for turn in assistant_turns:
        assert len(parse_qa_output(turn, 3).pairs) == 3
    assert messages[-1]["role"] == "user" and "A sentence." in messages[-1]["content"]


def test_schema_bounds_the_number_of_pairs():
    schema = qa_list_schema(4)
    assert schema["properties"]["qa_list"]["maxItems"] == 4


def test_user_template_replaces_the_instruction_and_keeps_literal_braces(tmp_path):
    template = tmp_path / "template.txt"
    template.write_text('Write {m} pairs. Answer as {"qa_list": [...]}.', encoding="utf-8")
    messages = build_messages("", "A sentence.", m=4, preset="general", instruction=load_instruction(template))
    assert messages[0]["content"] == 'Write 4 pairs. Answer as {"qa_list": [...]}.'


def test_unreadable_or_empty_templates_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        load_instruction(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="cannot read"):
        load_instruction(binary)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Which person set up the ferry?", "Which person set up the ferry?"),
        ("Question: Which person set up the ferry?", "Which person set up the ferry?"),
        ('**Rewritten question:** "Which person set up the ferry?"', "Which person set up the ferry?"),
        ("1. Which person set up the ferry?\nAnswer: Edda Pellworth", "Which person set up the ferry?"),
        ("Quickly: which person set up the ferry?", "Quickly: which person set up the ferry?"),
        ("Who started the ferry in 1871?", None),  # the same question
        ("who started the ferry in 1871 ?", None),  # the same words
        ("Was it Edda Pellworth who began the ferry?", None),  # the answer given away
        ("Edda Pellworth started it.", None),  # not a question
        ("", None),
    ],
)
def test_parse_rewrite_keeps_a_new_question_that_does_not_give_its_answer_away(reply, expected):
    assert parse_rewrite(reply, "Who started the ferry in 1871?", "Edda Pellworth") == expected
