"""The `lift-ray` command: lift, serve, ask, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from lift_ray.config import LiftConfig, ServeConfig, load_config

log = logging.getLogger("lift_ray")
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


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=3 (repeatable)",
    )


def start_serve(config: ServeConfig, app_name: str = "lift") -> str:
    """Start Ray Serve on config.host:port with the lift-ray app; returns the base URL."""
    from ray import serve

    from lift_ray.client import wait_until_healthy
    from serve.app import build_app

    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=app_name, route_prefix=config.route_prefix, blocking=False)
    url = f"http://{config.host}:{config.port}"
    wait_until_healthy(url)
    return url


def run_lift(config: LiftConfig, inputs: list[str]) -> int:
    """LIFT local files/folders; print a per-document report; exit status 1 if any document failed."""
    from lift_ray.documents import collect_documents
    from lift_ray.pipeline import DocumentReport, lift_documents

    documents, failures = collect_documents(inputs)
    reports = [DocumentReport(name, status="failed", error=error) for name, error in failures.items()]
    reports += lift_documents(documents, config)
    for report in reports:
        print(json.dumps(report.to_dict()))
    counts = {status: sum(r.status == status for r in reports) for status in ("published", "skipped", "failed")}
    print(f"summary: {counts}")
    return 1 if counts["failed"] else 0


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

    from lift_ray.storage import Store, read_manifest

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
    lift = commands.add_parser("lift", help="LIFT documents (files or folders of .txt/.md)")
    lift.add_argument("inputs", nargs="+")
    _config_args(lift)
    demo = commands.add_parser("demo", help="LIFT the bundled sample document, serve it, ask it questions")
    demo.add_argument("--port", type=int, default=8000)
    _config_args(demo)
    serve_cmd = commands.add_parser("serve", help="run the Ray Serve endpoint until interrupted")
    _config_args(serve_cmd)
    ask_cmd = commands.add_parser("ask", help="ask a question of a document over HTTP")
    ask_cmd.add_argument("doc_id")
    ask_cmd.add_argument("question")
    ask_cmd.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args(argv)
    _setup_logging()

    if args.command == "ask":
        from lift_ray.client import ask

        print(ask(args.url, args.doc_id, args.question))
        return 0
    if args.command == "serve":
        serve_config = load_config(ServeConfig, args.config, args.overrides)
        print("serve config:\n" + serve_config.model_dump_json(indent=2))
        url = start_serve(serve_config)
        print(f"serving on {url} (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
    config = load_config(LiftConfig, args.config, args.overrides)
    print("lift config:\n" + config.to_yaml())
    if args.command == "lift":
        return run_lift(config, args.inputs)
    return run_demo(config, args.port)


if __name__ == "__main__":
    sys.exit(main())
