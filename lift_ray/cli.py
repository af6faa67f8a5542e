"""The `lift-ray` command: lift, serve, ask, demo."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lift_ray.config import LiftConfig, ServeConfig, add_config_arguments, load_config
from lift_ray.corpus import Corpus, CorpusError, fail_long_documents, read_corpus
from lift_ray.documents import Document, validate_doc_id
from lift_ray.layout import (
    REPORT_NAME,
    SUMMARY_NAME,
    adapter_is_current,
    published_at,
    read_manifest,
    report_key,
    report_prefix,
)
from lift_ray.ray_connect import RayClusterUnreachable
from lift_ray.report import DocumentReport
from lift_ray.storage import Store, StoreError, write_json_lines

log = logging.getLogger("lift_ray")
REPORT_STATUSES = ("published", "low_quality", "skipped", "failed")
SAMPLE_DOCUMENT = Path(__file__).resolve().parent.parent / "samples" / "orvella.txt"
DEMO_QUESTIONS = [
    ("Who started the Orvella Glass Works?", "Ilsa Varnholt"),
    ("What is the violet glass made in Tessaro called?", "Tessaro Dusk"),
    ("How many people work at the Orvella Glass Works today?", "forty-two"),
    ("Who runs the Orvella Glass Works now?", "Tomas Quell"),
    ("How long does it take to make one Kestrel cup?", "nineteen minutes"),
]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)


def start_serve(config: ServeConfig, app_name: str = "lift") -> str:
    """Start Ray Serve on config.host:port with the lift-ray app; returns the base URL."""
    from ray import serve

    from lift_ray.client import wait_until_healthy
    from lift_ray.ray_connect import connect_ray
    from lift_ray.serving.app import build_app

    connect_ray(namespace="serve")  # as serve.start would (Ray Serve's namespace), but bounded on a dead cluster
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=app_name, route_prefix=config.route_prefix, blocking=False)
    url = f"http://{config.host}:{config.port}"
    wait_until_healthy(url)
    return url


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique name for one run's report folder: UTC time plus a random suffix."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def report_rows(corpus: Corpus, reports: Sequence[DocumentReport]) -> list[dict[str, Any]]:
    """One JSON-ready row per document: read failures first, then what the pipeline did, each with its source."""
    rows = []
    for failure in corpus.failures:
        report = DocumentReport(failure.name, status="failed", error=failure.reason)
        rows.append({**report.to_dict(), "source": failure.source})
    for report in reports:
        rows.append({**report.to_dict(), "source": corpus.sources.get(report.doc_id)})
    return rows


def report_after_crash(
    document: Document, config: LiftConfig, store: Store, error: str, started_at: datetime
) -> DocumentReport:
    """A document's report when the pipeline broke down: what its manifest says, else failed with `error`.

    Documents finish one by one, so some were published before the breakdown (or in an earlier run); their
    manifests say so, and a rerun skips them.
    """
    try:
        manifest = read_manifest(store, config.storage.namespace, document.doc_id)
    except StoreError:
        manifest = None
    published = published_at(manifest) if manifest else None
    if not (manifest and published and adapter_is_current(manifest, document.sha256, config.adapter_hash())):
        return DocumentReport(document.doc_id, status="failed", error=error)
    status = "published" if published >= started_at else "skipped"
    return DocumentReport(
        document.doc_id,
        status=status,
        qa_count=int(manifest.get("qa_count") or 0),
        final_loss=manifest.get("final_loss"),
        adapter_uri=manifest.get("adapter_uri"),
        adapter_bytes=manifest.get("adapter_bytes"),
    )


def run_summary(
    rows: Sequence[dict[str, Any]],
    *,
    run_id: str,
    inputs: Sequence[str],
    config: LiftConfig,
    started_at: datetime,
    total_s: float,
    read_failures: int = 0,
    read_s: float | None = None,
) -> dict[str, Any]:
    """Counts per status, throughput, how long reading the inputs took, and what the run was given (config hash,
    inputs, output)."""
    counts = {status: sum(row["status"] == status for row in rows) for status in REPORT_STATUSES}
    hours = total_s / 3600
    return {
        "run_id": run_id,
        "started_at": started_at.isoformat(timespec="seconds"),
        "total_s": round(total_s, 2),
        "read_s": round(read_s, 2) if read_s is not None else None,
        "documents": len(rows),
        "counts": counts,
        "read_failures": read_failures,
        "documents_per_hour": round(len(rows) / hours, 2) if hours > 0 else None,
        "published_per_hour": round(counts["published"] / hours, 2) if hours > 0 else None,
        "config_hash": config.adapter_hash(),
        "inputs": list(inputs),
        "output": config.storage.root,
        "namespace": config.storage.namespace,
    }


def write_run_report(store: Store, run_id: str, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Write `_reports/<run_id>/report.jsonl`, then `summary.json` (naming the report); the report's URI."""
    write_json_lines(store, report_key(run_id, REPORT_NAME), list(rows))
    report_uri = store.child_uri(report_key(run_id, REPORT_NAME))
    store.write_json(report_key(run_id, SUMMARY_NAME), {**summary, "report": report_uri})
    return report_uri


def _error(message: str) -> None:
    print(f"lift-ray lift: {message}", file=sys.stderr, flush=True)


def run_lift(config: LiftConfig, inputs: Sequence[str], run_id: str | None = None) -> int:
    """LIFT local files/folders, s3:// prefixes and manifests; write the run's report; exit status 0, 1 or 2.

    0: every document was published or skipped. 1: at least one failed (at read time or in the pipeline).
    2: nothing was attempted: the output store or an input root is unusable, or there was nothing to read.
    """
    run_id = run_id or new_run_id()
    started_at, started = datetime.now(UTC), time.perf_counter()
    try:
        validate_doc_id(run_id, "run id")
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        store = Store.from_uri(config.storage.root)
        store.list_keys(report_prefix(run_id))  # fails early on a missing bucket or bad credentials
    except (ValueError, StoreError) as exc:
        _error(f"cannot use output {config.storage.root!r}: {exc}")
        return 2
    say = lambda message: print(message, flush=True)  # noqa: E731
    read_started = time.perf_counter()
    try:
        corpus = read_corpus(inputs, progress=say, max_document_bytes=config.corpus.max_document_bytes)
    except CorpusError as exc:
        _error(str(exc))
        return 2
    read_s = time.perf_counter() - read_started
    say(f"inputs read in {read_s:.2f} s")
    if not corpus.documents and not corpus.failures:
        _error(f"no documents found in {list(inputs)}")
        return 2

    # From here on every document gets a row in the report, whatever breaks (a module missing from the job's
    # Python, a dead cluster, the pipeline): documents without an adapter fail with the reason.
    try:
        reports = _lift_corpus(corpus, config, say)
    except Exception as exc:
        log.exception("the LIFT pipeline failed")
        error = f"pipeline failed: {type(exc).__name__}: {exc}"
        reports = [report_after_crash(d, config, store, error, started_at) for d in corpus.documents]

    rows = report_rows(corpus, reports)
    for row in rows:
        print(json.dumps(row), flush=True)
    summary = run_summary(
        rows,
        run_id=run_id,
        inputs=inputs,
        config=config,
        started_at=started_at,
        total_s=time.perf_counter() - started,
        read_failures=len(corpus.failures),
        read_s=read_s,
    )
    print(f"summary: {summary['counts']} in {summary['total_s']} s", flush=True)
    try:
        report_uri = write_run_report(store, run_id, rows, summary)
    except StoreError as exc:
        _error(f"cannot write the run report: {exc}")
        return 1
    print(f"report: {report_uri}", flush=True)
    print(f"summary: {store.child_uri(report_key(run_id, SUMMARY_NAME))}", flush=True)
    return 1 if summary["counts"]["failed"] else 0


def _lift_corpus(corpus: Corpus, config: LiftConfig, say: Callable[[str], None]) -> list[DocumentReport]:
    """The cost guard (too-long documents join the read failures), then the pipeline on the rest."""
    for failure in fail_long_documents(corpus, config.corpus.max_sentences, config.sentences.max_sentence_chars):
        say(f"too long: {failure.source}: {failure.reason}")
    if not corpus.documents:
        return []
    from lift_ray import pipeline

    return pipeline.lift_documents(corpus.documents, config)


def _lift_command(args: argparse.Namespace, inputs: list[str]) -> int:
    """`lift-ray lift` / jobs/lift.py: load the config (exit 2 if bad), apply --output, run."""
    try:
        config = load_config(LiftConfig, args.config, args.overrides)
        if args.output is not None:
            config.storage.root = args.output
        if args.run_id is not None:
            validate_doc_id(args.run_id, "run id")
    except ValueError as exc:  # ConfigError, pydantic's ValidationError, InvalidDocumentId
        _error(str(exc))
        return 2
    print("lift config:\n" + config.to_yaml(), flush=True)
    return run_lift(config, inputs, run_id=args.run_id)


def run_demo(config: LiftConfig, port: int) -> int:
    """LIFT the bundled sample, serve it, and compare base and LIFTed answers over HTTP."""
    from lift_ray.client import ask
    from lift_ray.documents import read_document_file
    from lift_ray.pipeline import lift_documents

    timings: dict[str, float] = {}
    document = read_document_file(SAMPLE_DOCUMENT)
    print(f"\nLIFTing {SAMPLE_DOCUMENT.name} ({len(document.text.split())} words) as document {document.doc_id!r}\n")
    started = time.perf_counter()
    [report] = lift_documents([document], config)
    timings["lift (total)"] = time.perf_counter() - started
    if report.status == "failed":
        print(f"LIFT failed: {report.error}")
        return 1
    timings.update({f"  {k}": v for k, v in report.timings.items()})
    serve_config = ServeConfig(model=config.model, storage=config.storage, port=port)
    started = time.perf_counter()
    url = start_serve(serve_config)
    timings["serve start"] = time.perf_counter() - started
    rows = []
    started = time.perf_counter()
    for question, expected in DEMO_QUESTIONS:
        rows.append((question, expected, ask(url, "base", question), ask(url, document.doc_id, question)))
    timings["answer questions"] = time.perf_counter() - started
    _save_loss_curve(config, document.doc_id, Path(config.work_dir) / "demo_loss.png")
    print("\n" + "=" * 100)
    print(f"{report.qa_count} QA pairs from {report.sentences} sentences; final training loss {report.final_loss}")
    for question, expected, base, lifted in rows:
        print(f"\nQ: {question}   (document says: {expected})")
        print(f"  base model : {base}")
        print(f"  LIFTed     : {lifted}")
    correct = sum(expected.lower() in lifted.lower() for _, expected, _, lifted in rows)
    base_correct = sum(expected.lower() in base.lower() for _, expected, base, _ in rows)
    print(f"\ncorrect: LIFTed {correct}/{len(rows)}, base {base_correct}/{len(rows)}")
    print("\nstage timings (s):")
    for stage, seconds in timings.items():
        print(f"  {stage:<20} {seconds:8.1f}")
    print("=" * 100)
    return 0


def _save_loss_curve(config: LiftConfig, doc_id: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = read_manifest(Store.from_uri(config.storage.root), config.storage.namespace, doc_id) or {}
    losses = manifest.get("step_losses") or []
    if not losses:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(range(1, len(losses) + 1), losses)
    axis.set(xlabel="step (rank 0)", ylabel="loss on answer tokens", title=f"LIFT training loss: {doc_id}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"loss curve saved to {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lift-ray` console script."""
    parser = argparse.ArgumentParser(prog="lift-ray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    lift = commands.add_parser(
        "lift", help="LIFT documents: files, folders of .txt/.md, s3://bucket/prefix, manifest.jsonl"
    )
    lift.add_argument("inputs", nargs="*", metavar="INPUT", help="file, folder, s3://bucket/prefix or manifest.jsonl")
    lift.add_argument(
        "--input",
        dest="more_inputs",
        action="append",
        default=[],
        metavar="INPUT",
        help="another input, like the positional ones (repeatable)",
    )
    lift.add_argument("--output", help="local path or s3://bucket/prefix for adapters and reports (sets storage.root)")
    lift.add_argument("--run-id", help="name of the report folder _reports/<run-id> (default: UTC time + random)")
    add_config_arguments(lift)
    demo = commands.add_parser("demo", help="LIFT the bundled sample document, serve it, ask it questions")
    demo.add_argument("--port", type=int, default=8000)
    add_config_arguments(demo)
    serve_cmd = commands.add_parser("serve", help="run the Ray Serve endpoint until interrupted")
    add_config_arguments(serve_cmd)
    ask_cmd = commands.add_parser("ask", help="ask a question of a document over HTTP")
    ask_cmd.add_argument("doc_id")
    ask_cmd.add_argument("question")
    ask_cmd.add_argument("--url", default="http://127.0.0.1:8000")
    from lift_ray.eval.runner import add_eval_arguments

    eval_cmd = commands.add_parser("eval", help="compare base, ICL, Finetune-Raw and LIFT on the document-QA set")
    add_eval_arguments(eval_cmd)  # with its own --config (an eval or LIFT YAML) and --set
    args = parser.parse_args(argv)
    if args.command == "lift" and not [*args.inputs, *args.more_inputs]:
        lift.error("give at least one input (positionally or with --input)")
    _setup_logging()

    if args.command == "lift":
        return _lift_command(args, [*args.inputs, *args.more_inputs])

    if args.command == "eval":
        from lift_ray.eval.runner import eval_command

        return eval_command(args)
    if args.command == "ask":
        from lift_ray.client import ask

        print(ask(args.url, args.doc_id, args.question))
        return 0
    if args.command == "serve":
        serve_config = load_config(ServeConfig, args.config, args.overrides)
        print("serve config:\n" + serve_config.model_dump_json(indent=2))
        try:
            url = start_serve(serve_config)
        except RayClusterUnreachable as exc:
            print(f"lift-ray serve: {exc}", file=sys.stderr, flush=True)
            return 2
        print(f"serving on {url} (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
    config = load_config(LiftConfig, args.config, args.overrides)
    print("lift config:\n" + config.to_yaml())
    return run_demo(config, args.port)


if __name__ == "__main__":
    sys.exit(main())
