"""The bulk LIFT job without Ray: report.jsonl + summary.json through both stores, arguments and exit statuses."""

from __future__ import annotations

import json
import runpy
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lift_ray import pipeline
from lift_ray.cli import (
    main,
    new_run_id,
    report_rows,
    run_summary,
    write_run_report,
)
from lift_ray.config import LiftConfig
from lift_ray.corpus import Corpus, ReadFailure
from lift_ray.documents import Document
from lift_ray.layout import REPORTS_FOLDER, publish_adapter, report_key
from lift_ray.pipeline import DocumentReport
from lift_ray.storage import LocalStore, Store, read_json_lines

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An output root: a local folder or a prefix in a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('s3_bucket')}/lift/out"


def _hand_made_run() -> tuple[Corpus, list[DocumentReport]]:
    corpus = Corpus(
        documents=[Document.from_text("alpha", "Anna lives in Oslo."), Document.from_text("beta", "Bo.")],
        failures=[
            ReadFailure("/in/empty.txt", "document 'empty' is empty (0 bytes)", "empty"),
            ReadFailure("m.jsonl:4", "manifest line 4: document id '../x' is not allowed", None),
        ],
        sources={"alpha": "s3://b/docs/alpha.txt", "beta": "m.jsonl:2", "gamma": "/in/gamma.md"},
    )
    reports = [
        DocumentReport(
            "alpha",
            status="published",
            qa_count=42,
            sentences=7,
            final_loss=0.12,
            adapter_uri="s3://b/out/default/alpha/adapter",
            adapter_bytes=123_456,
            timings={"generate_s": 3.5, "train_s": 40.25, "publish_s": 0.5},
        ),
        DocumentReport("beta", status="skipped", adapter_uri="s3://b/out/default/beta/adapter"),
        DocumentReport("gamma", status="failed", error="no valid QA pairs from 3 sentences (3 malformed)"),
    ]
    return corpus, reports


def test_report_and_summary_round_trip_through_the_store(store_root: str) -> None:
    config = LiftConfig.model_validate({"storage": {"root": store_root, "namespace": "team-a"}})
    corpus, reports = _hand_made_run()
    rows = report_rows(corpus, reports)
    summary = run_summary(
        rows,
        run_id="run-1",
        inputs=["s3://b/docs", "m.jsonl"],
        config=config,
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        total_s=1800.0,
        read_failures=len(corpus.failures),
    )
    store = Store.from_uri(store_root)
    report_uri = write_run_report(store, "run-1", rows, summary)

    assert report_uri == store.child_uri("_reports/run-1/report.jsonl")
    assert report_uri.startswith("s3://" if store_root.startswith("s3://") else "/")
    assert store.list_keys("_reports") == ["_reports/run-1/report.jsonl", "_reports/run-1/summary.json"]
    back = read_json_lines(store, "_reports/run-1/report.jsonl")
    assert back == rows
    assert [(r["doc_id"], r["status"]) for r in back] == [
        ("empty", "failed"),
        ("m.jsonl:4", "failed"),
        ("alpha", "published"),
        ("beta", "skipped"),
        ("gamma", "failed"),
    ]
    alpha = back[2]
    assert alpha["qa_count"] == 42 and alpha["adapter_bytes"] == 123_456 and alpha["error"] is None
    assert alpha["timings"] == {"generate_s": 3.5, "train_s": 40.25, "publish_s": 0.5}
    assert alpha["source"] == "s3://b/docs/alpha.txt"
    assert back[0]["error"] == "document 'empty' is empty (0 bytes)" and back[0]["source"] == "/in/empty.txt"
    assert back[1]["error"].endswith("is not allowed") and back[1]["source"] == "m.jsonl:4"
    assert set(alpha) == {*DocumentReport("x", "published").to_dict(), "source"}

    written = store.read_json("_reports/run-1/summary.json")
    assert written == {**summary, "report": report_uri}
    assert written["counts"] == {"published": 1, "low_quality": 0, "skipped": 1, "failed": 3}
    assert written["documents"] == 5 and written["read_failures"] == 2
    assert written["documents_per_hour"] == 10.0  # 5 documents in half an hour
    assert written["published_per_hour"] == 2.0
    assert written["total_s"] == 1800.0
    assert written["config_hash"] == config.adapter_hash()
    assert written["inputs"] == ["s3://b/docs", "m.jsonl"]
    assert written["output"] == store_root and written["namespace"] == "team-a"
    assert written["started_at"] == "2025-01-02T03:04:05+00:00"


def test_summary_of_an_instant_run_has_no_rate(tmp_path: Path) -> None:
    summary = run_summary([], run_id="r", inputs=[], config=LiftConfig(), started_at=datetime.now(UTC), total_s=0.0)
    assert summary["documents_per_hour"] is None and summary["counts"] == {
        "published": 0,
        "low_quality": 0,
        "skipped": 0,
        "failed": 0,
    }


def test_run_ids_are_sortable_unique_and_safe() -> None:
    first = new_run_id(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert first.startswith("20250102T030405Z-") and len(first) == len("20250102T030405Z-") + 6
    assert new_run_id() != new_run_id()
    assert report_key(first, "summary.json") == f"{REPORTS_FOLDER}/{first}/summary.json"
    with pytest.raises(ValueError, match="run id"):
        report_key("../escape", "report.jsonl")


# --- the job end to end, with the pipeline replaced (no Ray) --------------------------------------------------------


@pytest.fixture
def corpus_dirs(tmp_path: Path) -> dict[str, Path]:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "one.txt").write_text("Anna lives in Oslo.")
    (good / "two.md").write_text("The museum opened in 1904.")
    (bad / "empty.txt").write_bytes(b"")
    (bad / "blob.txt").write_bytes(b"\x00\x01\x02")
    return {"good": good, "bad": bad}


@pytest.fixture
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace lift_documents: publish every document it gets, and record the ids of each call."""
    calls: list[list[str]] = []

    def lift_documents(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
        calls.append([d.doc_id for d in documents])
        return [
            DocumentReport(d.doc_id, "published", qa_count=5, adapter_bytes=1000, timings={"train_s": 1.0})
            for d in documents
        ]

    monkeypatch.setattr(pipeline, "lift_documents", lift_documents)
    return calls


def _read_run(root: str, run_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    store = Store.from_uri(root)
    return read_json_lines(store, f"_reports/{run_id}/report.jsonl"), store.read_json(f"_reports/{run_id}/summary.json")


def test_good_corpus_exits_0_with_positional_and_input_arguments(
    corpus_dirs: dict[str, Path], fake_pipeline: list[list[str]], s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (corpus_dirs["good"] / "three.txt").write_text("A third document.")
    manifest = corpus_dirs["good"].parent / "m.jsonl"
    manifest.write_text(json.dumps({"id": "inline", "text": "Inline text."}) + "\n")
    output = f"{s3_bucket}/adapters"
    argv = ["lift", str(corpus_dirs["good"]), "--input", str(manifest), "--output", output, "--run-id", "ok-run"]
    assert main([*argv, "--set", "storage.root=/ignored/because/output/wins"]) == 0

    assert fake_pipeline == [["one", "three", "two", "inline"]]
    rows, summary = _read_run(output, "ok-run")
    assert [(r["doc_id"], r["status"]) for r in rows] == [(i, "published") for i in ["one", "three", "two", "inline"]]
    assert summary["counts"] == {"published": 4, "low_quality": 0, "skipped": 0, "failed": 0}
    assert summary["inputs"] == [str(corpus_dirs["good"]), str(manifest)]
    assert summary["output"] == output
    out = capsys.readouterr().out
    assert f"reading {corpus_dirs['good']} (folder, 3 to read)" in out
    assert "read 4 documents, 0 failed" in out
    assert f"report: {output}/_reports/ok-run/report.jsonl" in out
    assert "root: " + output in out  # the config printed at the start shows where adapters go


def test_read_failures_exit_1_and_are_reported_without_starting_the_pipeline(
    corpus_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_pipeline(*_args: Any) -> None:
        raise AssertionError("lift_documents must not run when nothing was read")

    monkeypatch.setattr(pipeline, "lift_documents", no_pipeline)
    output = str(tmp_path / "store")
    assert main(["lift", str(corpus_dirs["bad"]), "--output", output, "--run-id", "bad-run"]) == 1
    rows, summary = _read_run(output, "bad-run")
    reasons = {r["doc_id"]: r["error"] for r in rows}
    assert reasons == {
        "blob": "document 'blob' looks binary (it contains NUL bytes)",
        "empty": "document 'empty' is empty (0 bytes)",
    }
    assert all(r["status"] == "failed" for r in rows)
    assert summary["counts"]["failed"] == 2 and summary["read_failures"] == 2
    out = capsys.readouterr().out
    assert f"read failed: {corpus_dirs['bad'] / 'empty.txt'}: document 'empty' is empty (0 bytes)" in out
    assert f"report: {LocalStore(output).child_uri('_reports/bad-run/report.jsonl')}" in out


def test_mixed_corpus_exits_1_and_good_documents_still_go_through(
    corpus_dirs: dict[str, Path], fake_pipeline: list[list[str]], tmp_path: Path
) -> None:
    output = str(tmp_path / "store")
    assert main(["lift", "--input", str(corpus_dirs["bad"]), "--input", str(corpus_dirs["good"]), "--output", output,
                 "--run-id", "mixed"]) == 1  # fmt: skip
    assert fake_pipeline == [["one", "two"]]
    rows, summary = _read_run(output, "mixed")
    assert summary["counts"] == {"published": 2, "low_quality": 0, "skipped": 0, "failed": 2}
    assert {r["doc_id"]: r["source"] for r in rows}["one"] == str(corpus_dirs["good"] / "one.txt")


def test_a_pipeline_crash_fails_every_document_with_the_reason(
    corpus_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
        raise RuntimeError("the Ray cluster went away")

    monkeypatch.setattr(pipeline, "lift_documents", broken)
    output = str(tmp_path / "store")
    assert main(["lift", str(corpus_dirs["good"]), "--output", output, "--run-id", "crash"]) == 1
    rows, summary = _read_run(output, "crash")
    assert [r["error"] for r in rows] == ["pipeline failed: RuntimeError: the Ray cluster went away"] * 2
    assert summary["counts"]["failed"] == 2


def test_jobs_lift_py_takes_input_output_and_config(
    corpus_dirs: dict[str, Path], fake_pipeline: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "lift.yaml"
    config.write_text("storage:\n  namespace: bulk\ntrain:\n  epochs: 2\n")
    output = str(tmp_path / "job-store")
    argv = ["jobs/lift.py", "--input", str(corpus_dirs["good"]), "--output", output, "--config", str(config)]
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "train.epochs=3", "--run-id", "job"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / "lift.py"), run_name="__main__")
    assert exited.value.code == 0
    assert fake_pipeline == [["one", "two"]]
    _, summary = _read_run(output, "job")
    expected = LiftConfig.model_validate({"storage": {"namespace": "bulk"}, "train": {"epochs": 3}})
    assert summary["namespace"] == "bulk" and summary["config_hash"] == expected.adapter_hash()


# --- exit status 2: nothing was attempted ------------------------------------------------------------------------


def test_bad_config_exits_2(corpus_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lift", str(corpus_dirs["good"]), "--set", "train.epochs=-1", "--output", str(tmp_path)]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["lift", str(corpus_dirs["good"]), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["lift", str(corpus_dirs["good"]), "--run-id", "../up"]) == 2
    assert "run id '../up' is not allowed" in capsys.readouterr().err
    assert main(["lift", str(corpus_dirs["good"]), "--output", "gs://bucket/x"]) == 2
    assert "unsupported storage URI" in capsys.readouterr().err
    assert not list(tmp_path.rglob("_reports"))


def test_input_prefix_in_a_missing_bucket_exits_2_with_a_clear_message(
    corpus_dirs: dict[str, Path], tmp_path: Path, s3_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    output = str(tmp_path / "store")
    code = main(["lift", str(corpus_dirs["good"]), "--input", "s3://no-such-lift-bucket/docs", "--output", output])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read input s3://no-such-lift-bucket/docs" in err
    assert "bucket 'no-such-lift-bucket' does not exist" in err
    assert not (tmp_path / "store" / "_reports").exists()


def test_output_in_a_missing_bucket_exits_2_before_reading(
    corpus_dirs: dict[str, Path], s3_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lift", str(corpus_dirs["good"]), "--output", "s3://no-such-output-bucket/lift"]) == 2
    captured = capsys.readouterr()
    assert "cannot use output 's3://no-such-output-bucket/lift'" in captured.err
    assert "does not exist" in captured.err
    assert "reading " not in captured.out


def test_missing_local_input_and_no_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lift", str(tmp_path / "nope"), "--output", str(tmp_path / "store")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["lift", "--output", str(tmp_path / "store")])
    assert exited.value.code == 2
    assert "at least one input" in capsys.readouterr().err


def test_reports_never_collide_with_a_namespace() -> None:
    # namespaces must start with a letter or digit, so '_reports' can never be one
    with pytest.raises(ValueError, match="namespace"):
        LiftConfig.model_validate({"storage": {"namespace": REPORTS_FOLDER}})
    assert REPORTS_FOLDER.startswith("_")


def test_after_a_pipeline_crash_documents_with_an_adapter_are_reported_from_their_manifests(
    corpus_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run broke after publishing 'one' ('two' was published by an earlier run): only 'three' failed."""
    (corpus_dirs["good"] / "three.txt").write_text("A third document.")
    output = str(tmp_path / "store")
    config = LiftConfig(storage={"root": output})
    store = Store.from_uri(output)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")

    def publish(doc_id: str, text: str) -> None:
        sha = Document.from_text(doc_id, text).sha256
        manifest = {"config_hash": config.adapter_hash(), "doc_sha256": sha, "qa_count": 4, "final_loss": 0.5}
        publish_adapter(store, "default", doc_id, adapter, manifest)

    publish("two", "The museum opened in 1904.")  # before this run

    def broken(documents: list[Document], config: LiftConfig) -> list[DocumentReport]:
        publish("one", "Anna lives in Oslo.")
        raise RuntimeError("the Ray cluster went away")

    monkeypatch.setattr(pipeline, "lift_documents", broken)
    assert main(["lift", str(corpus_dirs["good"]), "--output", output, "--run-id", "crash"]) == 1
    rows, summary = _read_run(output, "crash")
    by_id = {r["doc_id"]: r for r in rows}
    assert by_id["one"]["status"] == "published" and by_id["one"]["error"] is None
    assert by_id["one"]["adapter_uri"] == store.child_uri("default/one/adapter") and by_id["one"]["qa_count"] == 4
    assert by_id["two"]["status"] == "skipped"
    assert by_id["three"]["status"] == "failed"
    assert by_id["three"]["error"] == "pipeline failed: RuntimeError: the Ray cluster went away"
    assert summary["counts"] == {"published": 1, "low_quality": 0, "skipped": 1, "failed": 1}


# --- a crash anywhere after the inputs are read still writes the report -------------------------------------------


def test_a_crash_in_the_long_document_check_still_writes_the_report(
    corpus_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The job's Python lacked a module the sentence splitter needs: every document fails with the reason."""
    from lift_ray import cli

    def no_splitter(*_args: Any) -> None:
        raise ModuleNotFoundError("No module named 'pysbd'")

    monkeypatch.setattr(cli, "fail_long_documents", no_splitter)
    output = str(tmp_path / "store")
    assert main(["lift", str(corpus_dirs["good"]), "--output", output, "--run-id", "no-splitter"]) == 1
    rows, summary = _read_run(output, "no-splitter")
    assert [(r["doc_id"], r["status"]) for r in rows] == [("one", "failed"), ("two", "failed")]
    assert {r["error"] for r in rows} == {"pipeline failed: ModuleNotFoundError: No module named 'pysbd'"}
    assert summary["counts"] == {"published": 0, "low_quality": 0, "skipped": 0, "failed": 2}


def test_a_pipeline_that_cannot_be_imported_still_writes_the_report(
    corpus_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`lift_ray.pipeline` (torch, Ray) fails to import: the report rows must not need it."""
    import lift_ray

    monkeypatch.delattr(lift_ray, "pipeline", raising=False)
    monkeypatch.setitem(sys.modules, "lift_ray.pipeline", None)  # any import of it now raises ModuleNotFoundError
    output = str(tmp_path / "store")
    assert main(["lift", str(corpus_dirs["good"]), "--output", output, "--run-id", "no-pipeline"]) == 1
    rows, summary = _read_run(output, "no-pipeline")
    assert [(r["doc_id"], r["status"]) for r in rows] == [("one", "failed"), ("two", "failed")]
    assert all(r["error"].startswith("pipeline failed: ModuleNotFoundError: ") for r in rows)
    assert "lift_ray.pipeline" in rows[0]["error"]
    assert summary["counts"]["failed"] == 2
