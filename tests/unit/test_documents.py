import pytest

from lift_ray.documents import (
    Document,
    DocumentError,
    InvalidDocumentId,
    doc_id_from_filename,
    sentence_rows,
    split_sentences,
    validate_doc_id,
)


@pytest.mark.parametrize("doc_id", ["report-2024", "a", "Doc_1.v2", "x" * 128])
def test_safe_ids_are_accepted(doc_id):
    assert validate_doc_id(doc_id) == doc_id


@pytest.mark.parametrize("doc_id", ["../etc", "a/b", "a\\b", "..", "a..b", "", ".hidden", "x" * 129, "sp ace", "é"])
def test_unsafe_ids_are_rejected_with_a_reason(doc_id):
    with pytest.raises(InvalidDocumentId, match="not allowed"):
        validate_doc_id(doc_id)


def test_id_comes_from_the_file_name():
    assert doc_id_from_filename("docs/annual-report.txt") == "annual-report"
    with pytest.raises(InvalidDocumentId):
        doc_id_from_filename("my report.txt")


def test_sentences_are_split_and_keep_their_preceding_context():
    text = "Anna lives in Oslo. She owns a red boat.\n\nThe boat is called Mira. It sails on Sundays."
    rows = sentence_rows(Document.from_text("d", text), context_chars=2000)
    assert [r["sentence"] for r in rows] == [
        "Anna lives in Oslo.",
        "She owns a red boat.",
        "The boat is called Mira.",
        "It sails on Sundays.",
    ]
    assert rows[0]["context"] == ""
    assert rows[1]["context"] == "Anna lives in Oslo."
    assert rows[3]["context"].endswith("The boat is called Mira.")
    assert [r["sentence_index"] for r in rows] == [0, 1, 2, 3]


def test_context_is_bounded_and_starts_at_a_word():
    text = " ".join(f"Sentence number {i} is here." for i in range(200))
    rows = sentence_rows(Document.from_text("d", text), context_chars=100)
    last = rows[-1]["context"]
    assert 0 < len(last) <= 100
    assert last.split()[0] in {"Sentence", "number", "is", "here."} or last[0].isdigit()


def test_a_huge_unpunctuated_sentence_is_cut_into_bounded_chunks():
    text = "word " * 200_000  # 1 MB with no punctuation
    sentences = split_sentences(text, max_sentence_chars=1000)
    assert len(sentences) >= 1000
    assert max(len(s) for s in sentences) <= 1000
    assert sum(len(s.split()) for s in sentences) == 200_000


def test_empty_binary_and_non_utf8_documents_fail_with_reasons():
    with pytest.raises(DocumentError, match="empty"):
        Document.from_bytes("e", b"  \n\t ")
    with pytest.raises(DocumentError, match="UTF-8"):
        Document.from_bytes("latin", "café".encode("latin-1"))
    with pytest.raises(DocumentError, match="binary"):
        Document.from_bytes("bin", b"abc\x00def")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Die Glashütte wurde 1887 gegründet. Sie liegt in Tessaro! Wer leitet sie?",
            ["Die Glashütte wurde 1887 gegründet.", "Sie liegt in Tessaro!", "Wer leitet sie?"],
        ),
        (
            "玻璃厂成立于1887年。它位于山村泰萨罗。厂长是托马斯。",
            ["玻璃厂成立于1887年。", "它位于山村泰萨罗。", "厂长是托马斯。"],
        ),
        (
            "Стекольный завод основан в 1887 году. Он находится в деревне.",
            ["Стекольный завод основан в 1887 году.", "Он находится в деревне."],
        ),
    ],
)
def test_non_english_text_is_split_into_its_sentences(text, expected):
    assert split_sentences(text) == expected
    rows = sentence_rows(Document.from_text("doc", text))
    assert [r["sentence"] for r in rows] == expected
    assert rows[-1]["context"].startswith(expected[0][:5])


def test_unspaced_text_without_punctuation_is_chunked_without_losing_characters():
    text = "字" * 5000  # no spaces and no sentence end: the chunker must cut inside the "word"
    sentences = split_sentences(text, max_sentence_chars=1000)
    assert max(len(s) for s in sentences) <= 1000
    assert "".join(sentences) == text
