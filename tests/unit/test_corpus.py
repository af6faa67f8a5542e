"""read_corpus over a local folder, an S3 prefix (moto server) and manifest.jsonl files: every bad item alone."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import boto3
import pytest

from lift_ray.corpus import (
    Corpus,
    CorpusError,
    ReadFailure,
    ResolvedInput,
    fail_long_documents,
    read_corpus,
    read_resolved,
    resolve_inputs,
    split_lines,
)
from lift_ray.documents import split_sentences

GOOD_ONE = "Anna lives in Oslo. She owns a red boat called Mira."
GOOD_TWO = "# The museum\n\nThe Pellworth Museum opened in 1904. It is closed on Tuesdays.\n"
LONG_LINE = ("word " * 200_000).encode()  # 1 MB, one line, no punctuation: accepted, and chunked later

# file name -> bytes: two good documents, the 1 MB line, and one of each kind of bad file.
FILES: dict[str, bytes] = {
    "good-one.txt": GOOD_ONE.encode(),
    "good-two.md": GOOD_TWO.encode(),
    "long-line.txt": LONG_LINE,
    "empty.txt": b"",
    "blank.txt": b"  \n\t \n",
    "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    "latin1.txt": "café crème brûlée".encode("latin-1"),
    "bad name.txt": b"A perfectly good text with a bad file name.",
    "sub/good-one.md": b"Another document whose id clashes with good-one.txt.",
    "vanishing.txt": b"This one is deleted between listing and reading.",
    "notes.json": b'{"not": "a document"}',  # not .txt/.md: ignored, neither read nor failed
}

# source file name -> what its failure reason must say
EXPECTED_FAILURES = {
    "empty.txt": "document 'empty' is empty (0 bytes)",
    "blank.txt": "document 'blank' is empty or whitespace only",
    "binary.txt": "document 'binary' looks binary",
    "latin1.txt": "document 'latin1' is not UTF-8 text (byte 3",
    "bad name.txt": "document id 'bad name' is not allowed",
    "good-one.md": "duplicate id, first seen at ",
}


def _failures_by_name(corpus: Corpus) -> dict[str, ReadFailure]:
    by_name = {failure.source.rsplit("/", 1)[-1]: failure for failure in corpus.failures}
    assert len(by_name) == len(corpus.failures), "each failure comes from its own source"
    return by_name


def _check_good_documents(corpus: Corpus) -> None:
    documents = {d.doc_id: d for d in corpus.documents}
    assert sorted(documents) == ["good-one", "good-two", "long-line"]
    assert documents["good-one"].text == GOOD_ONE
    assert documents["good-two"].text == GOOD_TWO
    assert documents["long-line"].text == LONG_LINE.decode()
    assert "\n" not in documents["long-line"].text


@pytest.fixture
def local_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def s3_corpus(s3_bucket: str) -> str:
    bucket = s3_bucket[len("s3://") :]
    client = boto3.client("s3")
    for name, data in FILES.items():
        client.put_object(Bucket=bucket, Key=f"corpus/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="corpus-other/stray.txt", Body=b"Not under the corpus/ folder.")
    return f"{s3_bucket}/corpus"


# --- a folder and an S3 prefix with every kind of bad file ------------------------------------------------------


def test_local_folder_every_bad_file_fails_alone_with_its_reason(local_corpus: Path) -> None:
    resolved = resolve_inputs([local_corpus])
    (local_corpus / "vanishing.txt").unlink()  # gone between listing and reading
    progress: list[str] = []
    corpus = read_resolved(resolved, progress=progress.append)

    _check_good_documents(corpus)
    failures = _failures_by_name(corpus)
    assert set(failures) == {*EXPECTED_FAILURES, "vanishing.txt"}
    for name, reason in EXPECTED_FAILURES.items():
        assert failures[name].reason.startswith(reason), (name, failures[name].reason)
    assert failures["good-one.md"].reason == f"duplicate id, first seen at {local_corpus / 'good-one.txt'}"
    assert failures["good-one.md"].doc_id == "good-one"
    assert failures["bad name.txt"].doc_id is None
    vanished = local_corpus / "vanishing.txt"
    assert failures["vanishing.txt"].reason == f"cannot read {vanished}: No such file or directory"
    assert corpus.sources["good-two"] == str(local_corpus / "good-two.md")
    # progress: what is read, each failure, and the totals
    assert progress[0] == f"reading {local_corpus} (folder, 10 to read)"
    assert sum(line.startswith("read failed: ") for line in progress) == 7
    assert progress[-1] == "read 3 documents, 7 failed"


def test_s3_prefix_every_bad_object_fails_alone_and_a_vanished_object_has_its_read_error(s3_corpus: str) -> None:
    resolved = resolve_inputs([s3_corpus])
    assert resolved[0].kind == "s3-prefix"
    assert f"{s3_corpus}/notes.json" not in resolved[0].locations
    assert not any("corpus-other" in uri for uri in resolved[0].locations), "prefix is a folder, not a string prefix"
    bucket, key = s3_corpus[len("s3://") :].split("/", 1)
    boto3.client("s3").delete_object(Bucket=bucket, Key=f"{key}/vanishing.txt")

    corpus = read_resolved(resolved)

    _check_good_documents(corpus)
    failures = _failures_by_name(corpus)
    assert set(failures) == {*EXPECTED_FAILURES, "vanishing.txt"}
    for name, reason in EXPECTED_FAILURES.items():
        assert failures[name].reason.startswith(reason), (name, failures[name].reason)
    assert failures["good-one.md"].reason == f"duplicate id, first seen at {s3_corpus}/good-one.txt"
    assert failures["vanishing.txt"].reason == f"no object at {s3_corpus}/vanishing.txt"
    assert failures["vanishing.txt"].doc_id == "vanishing"
    assert corpus.sources["long-line"] == f"{s3_corpus}/long-line.txt"


def test_single_s3_object_and_trailing_slash_prefix(s3_corpus: str) -> None:
    corpus = read_corpus([f"{s3_corpus}/good-two.md", f"{s3_corpus}/sub/"])
    assert [d.doc_id for d in corpus.documents] == ["good-two", "good-one"]
    assert corpus.failures == []


def test_the_same_document_from_two_inputs_is_a_duplicate_naming_the_first(local_corpus: Path, s3_corpus: str) -> None:
    corpus = read_corpus([local_corpus / "good-two.md", f"{s3_corpus}/good-two.md"])
    assert [d.doc_id for d in corpus.documents] == ["good-two"]
    [failure] = corpus.failures
    assert failure.source == f"{s3_corpus}/good-two.md"
    assert failure.reason == f"duplicate id, first seen at {local_corpus / 'good-two.md'}"


# --- manifests ---------------------------------------------------------------------------------------------------


def _manifest_lines(missing_uri: str, long_uri: str) -> list[str]:
    return [
        json.dumps({"id": "alpha", "text": "Anna lives in Oslo. She owns a red boat."}),
        json.dumps({"id": "beta", "uri": "docs/beta.txt"}),
        json.dumps({"id": "long", "uri": long_uri}),
        json.dumps({"id": "../../etc/passwd", "uri": "docs/beta.txt"}),
        json.dumps({"id": "alpha", "text": "A second document claiming the id alpha."}),
        "this is not json",
        json.dumps({"uri": "docs/beta.txt"}),
        json.dumps({"id": "no-uri"}),
        json.dumps({"id": "missing", "uri": missing_uri}),
        json.dumps({"id": "empty", "text": ""}),
        "",
        json.dumps({"id": "blank", "text": "  \n\t "}),
        json.dumps({"id": "binary", "uri": "docs/binary.bin"}),
        json.dumps({"id": "latin", "uri": "docs/latin1.txt"}),
        json.dumps(["a", "list"]),
        json.dumps({"id": 7, "text": "a number as id"}),
        json.dumps({"id": "inline-long", "text": "inline " * 250_000}),  # a 1.75 MB manifest line
        json.dumps({"id": "gamma", "uri": "docs/gamma.md"}),
    ]


MANIFEST_FAILURES = {  # line number -> (doc id, reason starts with)
    4: (None, "manifest line 4: document id '../../etc/passwd' is not allowed"),
    5: ("alpha", "duplicate id, first seen at {manifest}:1"),
    6: (None, "manifest line 6 is not valid JSON (Expecting value)"),
    7: (None, "manifest line 7 has no 'id'"),
    8: ("no-uri", "manifest line 8 needs exactly one of 'uri' and 'text'"),
    9: ("missing", "no object at {missing}"),
    10: ("empty", "document 'empty' is empty (0 bytes)"),
    12: ("blank", "document 'blank' is empty or whitespace only"),
    13: ("binary", "document 'binary' looks binary"),
    14: ("latin", "document 'latin' is not UTF-8 text"),
    15: (None, "manifest line 15 must be a JSON object"),
    16: (None, "manifest line 16: 'id' must be a string, not int"),
    19: (None, "manifest line 19 is not UTF-8"),
}


def _check_manifest_corpus(corpus: Corpus, manifest: str, missing: str) -> None:
    documents = {d.doc_id: d for d in corpus.documents}
    assert list(documents) == ["alpha", "beta", "long", "inline-long", "gamma"]
    assert documents["beta"].text == GOOD_ONE
    assert documents["gamma"].text == GOOD_TWO
    assert documents["long"].text == LONG_LINE.decode()
    assert documents["inline-long"].text == "inline " * 250_000
    assert corpus.sources["alpha"] == f"{manifest}:1"
    failures = {int(f.source.split(" ")[0].rsplit(":", 1)[1]): f for f in corpus.failures}
    assert sorted(failures) == sorted(MANIFEST_FAILURES)
    for number, (doc_id, reason) in MANIFEST_FAILURES.items():
        failure = failures[number]
        assert failure.doc_id == doc_id, number
        assert failure.reason.startswith(reason.format(manifest=manifest, missing=missing)), failure.reason
    assert not any(d.doc_id.startswith(".") or "/" in d.doc_id for d in corpus.documents)


def _manifest_bytes(lines: list[str]) -> bytes:
    # line 19: not UTF-8; CRLF line ends are accepted
    return "\r\n".join(lines).encode() + b"\r\n" + b'{"id": "caf\xe9", "text": "x"}\n'


def test_local_manifest_with_relative_local_and_s3_uris(tmp_path: Path, s3_corpus: str) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "beta.txt").write_bytes(FILES["good-one.txt"])
    (tmp_path / "docs" / "gamma.md").write_bytes(FILES["good-two.md"])
    (tmp_path / "docs" / "binary.bin").write_bytes(FILES["binary.txt"])
    (tmp_path / "docs" / "latin1.txt").write_bytes(FILES["latin1.txt"])
    missing = f"{s3_corpus}/no-such-key.txt"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(_manifest_bytes(_manifest_lines(missing, f"{s3_corpus}/long-line.txt")))

    corpus = read_corpus([manifest])

    _check_manifest_corpus(corpus, str(manifest), missing)
    assert corpus.sources["beta"] == f"{manifest}:2 ({tmp_path / 'docs' / 'beta.txt'})"


def test_s3_manifest_with_keys_relative_to_it(s3_bucket: str) -> None:
    bucket = s3_bucket[len("s3://") :]
    client = boto3.client("s3")
    for key, name in [("beta.txt", "good-one.txt"), ("gamma.md", "good-two.md"), ("binary.bin", "binary.txt")]:
        client.put_object(Bucket=bucket, Key=f"batch/docs/{key}", Body=FILES[name])
    client.put_object(Bucket=bucket, Key="batch/docs/latin1.txt", Body=FILES["latin1.txt"])
    client.put_object(Bucket=bucket, Key="big/long-line.txt", Body=LONG_LINE)
    missing = f"{s3_bucket}/batch/docs/gone.txt"
    manifest = f"{s3_bucket}/batch/manifest.jsonl"
    body = _manifest_bytes(_manifest_lines(missing, f"{s3_bucket}/big/long-line.txt"))
    client.put_object(Bucket=bucket, Key="batch/manifest.jsonl", Body=body)

    corpus = read_corpus([manifest])

    _check_manifest_corpus(corpus, manifest, missing)
    assert corpus.sources["gamma"] == f"{manifest}:18 ({s3_bucket}/batch/docs/gamma.md)"


def test_s3_manifest_cannot_point_at_driver_files_or_escape_its_folder(s3_bucket: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("driver-local secret")
    lines = [
        json.dumps({"id": "local", "uri": str(secret)}),
        json.dumps({"id": "up", "uri": "../outside.txt"}),
        json.dumps({"id": "web", "uri": "https://example.com/a.txt"}),
    ]
    boto3.client("s3").put_object(Bucket=s3_bucket[5:], Key="m/manifest.jsonl", Body="\n".join(lines).encode())
    corpus = read_corpus([f"{s3_bucket}/m/manifest.jsonl"])
    assert corpus.documents == []
    reasons = [f.reason for f in corpus.failures]
    assert "must be a relative '/'-separated path" in reasons[0]
    assert "must not contain empty, '.' or '..' components" in reasons[1]
    assert "unsupported uri 'https://example.com/a.txt'" in reasons[2]


def test_manifest_deleted_after_resolving_fails_as_one_item(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    resolved = resolve_inputs([manifest])
    manifest.unlink()
    other = ResolvedInput("inline", "manifest", (str(tmp_path / "other.jsonl"),))
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "b", "text": "still read"}) + "\n")
    corpus = read_resolved([*resolved, other])
    assert [d.doc_id for d in corpus.documents] == ["b"]
    [failure] = corpus.failures
    assert failure.source == f"{manifest}:1"
    assert failure.reason.startswith(f"cannot read manifest {manifest} after line 0:")


# --- input roots that cannot be used at all -----------------------------------------------------------------------


def test_missing_bucket_is_a_clear_corpus_error(s3_server: str) -> None:
    with pytest.raises(CorpusError, match="bucket 'no-such-bucket-for-lift' does not exist"):
        resolve_inputs(["s3://no-such-bucket-for-lift/docs"])
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_inputs(["s3://no-such-bucket-for-lift/manifest.jsonl"])


def test_unusable_roots_are_corpus_errors(tmp_path: Path, s3_bucket: str) -> None:
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "only-json").mkdir()
    (tmp_path / "only-json" / "a.json").write_text("{}")
    cases = {
        str(tmp_path / "nope"): "does not exist",
        str(tmp_path / "empty-folder"): "has no .txt or .md files",
        str(tmp_path / "only-json"): "has no .txt or .md files",
        f"{s3_bucket}/nothing-here": "has no .txt or .md objects under it",
        f"{s3_bucket}/missing/manifest.jsonl": "does not exist",
        "gs://bucket/docs": "unsupported input",
    }
    for item, message in cases.items():
        with pytest.raises(CorpusError, match=message):
            read_corpus([item])
    with pytest.raises(CorpusError, match="no inputs"):
        read_corpus([])


def test_a_bad_root_stops_the_run_before_anything_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    progress: list[str] = []
    with pytest.raises(CorpusError):
        read_corpus([tmp_path, tmp_path / "missing"], progress=progress.append)
    assert progress == []


# --- big inputs -----------------------------------------------------------------------------------------------------


def test_split_lines_across_chunk_boundaries() -> None:
    chunks = [b"ab", b"c\nde", b"f\n\n", b"g", b"h", b"\r\ni"]
    assert list(split_lines(chunks)) == [b"abc", b"def", b"", b"gh\r", b"i"]
    assert list(split_lines([b"x\n"])) == [b"x"]
    assert list(split_lines([])) == []


def test_the_1mb_single_line_is_accepted_and_chunked_into_bounded_sentences(local_corpus: Path) -> None:
    corpus = read_corpus([local_corpus / "long-line.txt"])
    [document] = corpus.documents
    sentences = split_sentences(document.text, max_sentence_chars=1000)
    assert max(len(s) for s in sentences) <= 1000
    assert sum(len(s.split()) for s in sentences) == 200_000


def test_a_50mb_document_is_held_about_twice_at_most_while_reading(tmp_path: Path) -> None:
    size = 50 * 1024 * 1024
    (tmp_path / "huge.txt").write_bytes(b"lorem ipsum dolor sit amet. " * (size // 28))
    tracemalloc.start()
    try:
        corpus = read_corpus([tmp_path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [document] = corpus.documents
    assert len(document.text) == size // 28 * 28
    # the bytes and the decoded text, nothing more: no line lists, no stripped copies
    assert peak < 2.3 * size, f"peak {peak / size:.2f}x the file size"


# --- limits: corpus.max_document_bytes and corpus.max_sentences -----------------------------------------------


def test_documents_over_the_byte_limit_fail_without_being_read(tmp_path: Path, s3_bucket: str) -> None:
    limit = 1 << 20
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "small.txt").write_text(GOOD_ONE)
    with open(folder / "sparse.txt", "wb") as handle:  # 64 GiB that occupy no disk: reading it would not end
        handle.truncate(64 << 30)
    bucket = s3_bucket[len("s3://") :]
    big = b"lorem ipsum dolor sit amet " * ((24 << 20) // 27)  # ~24 MB
    boto3.client("s3").put_object(Bucket=bucket, Key="big.txt", Body=big)
    boto3.client("s3").put_object(Bucket=bucket, Key="tiny.txt", Body=GOOD_ONE.encode())
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text(json.dumps({"id": "inline-big", "text": "x" * (limit + 1)}) + "\n")

    corpus = read_corpus([folder, f"{s3_bucket}/big.txt", manifest], max_document_bytes=limit)

    assert [d.doc_id for d in corpus.documents] == ["small"]
    reasons = {f.doc_id: f.reason for f in corpus.failures}
    assert reasons["sparse"] == (
        f"document 'sparse' is {64 << 30:,} bytes, more than corpus.max_document_bytes (1,048,576): "
        "not read; raise the limit to LIFT it"
    )
    assert reasons["big"].startswith(f"document 'big' is {len(big):,} bytes, more than")
    assert reasons["inline-big"].startswith(f"document 'inline-big' is {limit + 1:,} bytes")
    # The S3 object's body is never downloaded: reading it costs what reading a tiny object costs (the
    # boto3 client, ~13 MB of Python objects, dominates both).
    peaks = []
    for key in ("tiny.txt", "big.txt"):
        tracemalloc.start()
        try:
            read_corpus([f"{s3_bucket}/{key}"], max_document_bytes=limit)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] - peaks[0] < len(big) / 20, f"peaks {peaks}"


def test_without_a_byte_limit_every_size_is_read(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_bytes(LONG_LINE)
    assert [d.doc_id for d in read_corpus([tmp_path], max_document_bytes=0).documents] == ["doc"]
    assert read_corpus([tmp_path], max_document_bytes=len(LONG_LINE)).documents  # the limit itself is allowed


def test_documents_with_more_sentences_than_the_limit_fail_with_their_count(local_corpus: Path) -> None:
    corpus = read_corpus([local_corpus / "good-one.txt", local_corpus / "long-line.txt"])
    assert fail_long_documents(corpus, max_sentences=0, max_sentence_chars=1000) == []  # 0: no limit

    [failure] = fail_long_documents(corpus, max_sentences=50, max_sentence_chars=1000)

    # 1 MB of words in pieces of at most 1000 characters: about a thousand "sentences"
    count = len(split_sentences(LONG_LINE.decode(), 1000))
    assert 1000 <= count <= 1100
    assert failure.doc_id == "long-line" and failure.source == str(local_corpus / "long-line.txt")
    assert failure.reason == (
        f"document 'long-line' has {count:,} sentences after splitting, more than corpus.max_sentences (50); "
        "raise the limit to LIFT it"
    )
    assert [d.doc_id for d in corpus.documents] == ["good-one"] and corpus.failures[-1] == failure


def test_s3_documents_are_read_in_parallel_and_come_out_in_order(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from lift_ray.storage import S3Store

    bucket = s3_bucket[len("s3://") :]
    client = boto3.client("s3")
    expected_ids, bad = [], []
    for i in range(40):
        name = f"d{i:02d}"
        body = b"" if i % 9 == 4 else f"Document {i} says the ferry left at {i} o'clock.".encode()
        client.put_object(Bucket=bucket, Key=f"many/{name}.txt", Body=body)
        (bad if not body else expected_ids).append(name)
    in_flight, peak, lock = [0], [0], threading.Lock()
    read_bytes = S3Store.read_bytes

    def slow_read(self: S3Store, key: str) -> bytes:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time.sleep(0.05)  # a GET's network wait
            return read_bytes(self, key)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(S3Store, "read_bytes", slow_read)
    parallel = read_corpus([f"{s3_bucket}/many/"], threads=8)
    assert peak[0] > 1  # GETs overlapped (wall time is no proof on a busy machine)
    assert [d.doc_id for d in parallel.documents] == expected_ids  # input (key) order
    assert [f.doc_id for f in parallel.failures] == bad and all("empty" in f.reason for f in parallel.failures)
    peak[0] = 0
    one_by_one = read_corpus([f"{s3_bucket}/many/"], threads=1)
    assert peak[0] == 1
    assert [(d.doc_id, d.text) for d in one_by_one.documents] == [(d.doc_id, d.text) for d in parallel.documents]
    assert one_by_one.failures == parallel.failures and one_by_one.sources == parallel.sources
