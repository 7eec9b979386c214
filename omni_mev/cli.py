"""The `omni-mev` command: train the model and inspect what the service recorded."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def _train(args: argparse.Namespace) -> int:
    from omni_mev.config import ConfigError
    from omni_mev.training.data import DataError
    from omni_mev.training.report import served_row
    from omni_mev.training.train import TrainConfig, train

    config = TrainConfig(
        seed=args.seed,
        opportunities=args.opportunities,
        data=args.data,
        family=args.family,
        hidden_size=args.hidden_size,
        max_epochs=args.max_epochs,
        batches_per_epoch=args.batches_per_epoch,
        batch_size=args.batch_size,
        patience=args.patience,
        max_minutes=args.max_minutes,
        device=args.device,
    )
    command = "omni-mev " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    docs = Path(args.docs) if args.docs else None
    try:
        card = train(config, Path(args.output), docs, command=command, progress=lambda line: print(line, flush=True))
    except (DataError, ConfigError) as error:  # bad data, or a device this machine lacks
        print(f"omni-mev train: {error}", file=sys.stderr)
        return 2
    served = card["test_metrics"][served_row(card)]
    summary = {"version": card["version_short"], "family": card["family"], "auc": round(served["auc_roc"], 4),
               "ece": round(served["ece"], 4), "recommended_threshold": card["thresholds"].get("recommended"),
               "stopped_by": card["training"]["stopped_by"], "seconds": card["training_seconds"]}
    if "oracle" in card["test_metrics"]:
        summary["oracle_auc"] = round(card["test_metrics"]["oracle"]["auc_roc"], 4)
    print(json.dumps(summary))
    return 0


def _load_data(command: str, source: str) -> Any:
    """The Dataset at `source`, or None after printing each problem (the caller exits 2)."""
    from omni_mev.training.data import DataError, load

    try:
        return load(source)
    except DataError as error:
        print(f"omni-mev {command}: {error}", file=sys.stderr)
        return None


def _data_check(args: argparse.Namespace) -> int:
    dataset = _load_data("data check", args.source)
    if dataset is None:
        return 2
    print(json.dumps(dataset.describe(), indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from omni_mev.runtime.base import ModelLoadError
    from omni_mev.training.evaluate import NothingHeldOut, evaluate_model

    dataset = _load_data("evaluate", args.data)
    if dataset is None:
        return 2
    try:
        report = evaluate_model(Path(args.model), dataset, args.threshold, every_row=args.all,
                                png=Path(args.png) if args.png else None)
    except (ModelLoadError, NothingHeldOut) as error:
        print(f"omni-mev evaluate: {error}", file=sys.stderr)
        return 2
    if "warning" in report:
        print(f"omni-mev evaluate: warning: {report['warning']}", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def _card(args: argparse.Namespace) -> int:
    from omni_mev.training.report import markdown

    print(markdown(json.loads(Path(args.card).read_text())), end="")
    return 0


def _decisions(args: argparse.Namespace) -> int:
    from omni_mev.config import load_settings
    from omni_mev.trading.intent_store import OutboxUnavailable
    from omni_mev.trading.summary import outbox_report, render, summarise

    settings = load_settings()
    path = Path(args.path) if args.path else settings.decision_log_path
    if not path.is_file():
        print(f"omni-mev decisions: no such file: {path}", file=sys.stderr)
        return 2
    try:
        outbox = outbox_report(args.outbox or settings.outbox_url)
    except OutboxUnavailable as error:
        print(f"omni-mev decisions: the outbox (AI_OUTBOX_URL) cannot be read: {error}", file=sys.stderr)
        return 2
    summary = summarise(path, outbox)
    print(json.dumps(summary, indent=2) if args.json else render(summary), end="\n" if args.json else "")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from omni_mev.config import load_settings
    from omni_mev.ledger.quality import quality_report
    from omni_mev.ledger.report import render, reliability_png
    from omni_mev.ledger.store import LedgerUnavailable, build_ledger

    settings = load_settings()
    url = args.url or settings.ledger_url
    if url is None:
        print("omni-mev quality: the ledger is off (AI_LEDGER_URL=off); give --url", file=sys.stderr)
        return 2
    threshold = settings.threshold if args.threshold is None else args.threshold
    serving = args.version or _registry_champion(settings)
    try:
        report = quality_report(build_ledger(url, 0.0), args.window, threshold, serving_version=serving)
    except LedgerUnavailable as error:
        print(f"omni-mev quality: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report), end="\n" if args.json else "")
    if args.png:
        reliability_png(report, Path(args.png))
        print(f"reliability diagram: {args.png}", file=sys.stderr)
    return 0


def _ledger_partition(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from omni_mev.config import load_settings
    from omni_mev.database import create_engine, first_line
    from omni_mev.ledger import partitions

    url = args.url or load_settings().ledger_url
    if url is None or not url.startswith("postgresql"):
        print("omni-mev ledger partition: the ledger is not on PostgreSQL (AI_LEDGER_URL, or --url); only "
              "PostgreSQL's is partitioned", file=sys.stderr)
        return 2
    engine = create_engine(url)
    try:
        moved = partitions.convert(engine)
    except sa.exc.SQLAlchemyError as error:
        print(f"omni-mev ledger partition: nothing changed: {first_line(error)}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print("predictions is partitioned already" if moved is None else
          f"predictions partitioned by day: {moved} rows moved")
    return 0


def _registry_champion(settings: Any) -> str | None:
    """The champion a registry names now (right after a promotion, before it has answered anything), if any."""
    if settings.model_registry is None:
        return None
    from omni_mev.registry.store import Registry, RegistryError

    try:
        return Registry.of(settings).alias("champion")
    except (RegistryError, OSError):
        return None


def _stream(args: argparse.Namespace) -> int:
    from omni_mev.stream.processes import main as serve_streams

    return serve_streams()


def _routes(args: argparse.Namespace) -> int:
    from omni_mev.api.routes import ROUTES, describe

    rows = describe(ROUTES)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("path", "methods", "kind", "auth", "errors", "counted", "endpoint")
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    for line in [dict(zip(columns, columns)), *rows]:
        print("  ".join(str(line[c]).ljust(widths[c]) for c in columns).rstrip())
    return 0


def _device(raw: str) -> str:
    """--device, checked as AI_TORCH_DEVICE is (whether the GPU is there is checked when training starts)."""
    from omni_mev.config import ConfigError
    from omni_mev.devices import parse_torch_device

    try:
        return parse_torch_device("--device", raw)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for all subcommands."""
    from omni_mev.registry.cli import add_commands as add_registry_commands
    from omni_mev.training.config import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="omni-mev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on simulated data or your own outcomes; export to ONNX; "
                                               "write the card")
    train.add_argument("--data", help="a CSV or Parquet file of outcomes, or the ledger's URL (docs/model.md); "
                                      "default: simulate")
    train.add_argument("--family", choices=["auto", "lstm", "trees", "ensemble"], default=defaults.family,
                       help="model to ship; auto: the best on the validation period")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--opportunities", type=int, default=defaults.opportunities,
                       help="simulated opportunities (without --data)")
    sized = "default: from the data's size (docs/model.md, 'The training budget')"
    train.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help=sized)
    train.add_argument("--max-epochs", type=int, default=defaults.max_epochs, help=sized)
    train.add_argument("--batches-per-epoch", type=int, default=defaults.batches_per_epoch, help=sized)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size, help=sized)
    train.add_argument("--patience", type=int, default=defaults.patience)
    train.add_argument("--max-minutes", type=float, default=defaults.max_minutes,
                       help="a guard only: training stops on epochs or patience, and the card says if this fired")
    train.add_argument("--device", type=_device, default=defaults.device,
                       help="where the network trains: cpu, cuda, cuda:N or auto (a GPU if there is one)")
    train.add_argument("--output", default="models", help="folder for lstm_omni.{onnx,pt,json}")
    train.add_argument("--docs", default="", help="folder for reliability.png ('' to skip)")
    train.set_defaults(handler=_train)

    data = commands.add_parser("data", help="training data").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="check a data source; exit 2 with each problem's row and column")
    check.add_argument("source", help="a CSV or Parquet file, or the ledger's URL")
    check.set_defaults(handler=_data_check)

    evaluate = commands.add_parser("evaluate", help="the card's metrics for a model on any data")
    evaluate.add_argument("--model", required=True, help="an ONNX model file")
    evaluate.add_argument("--data", required=True, help="a CSV or Parquet file, or the ledger's URL")
    evaluate.add_argument("--threshold", type=float,
                          help="the decision threshold to report at (default: the model's own, from its card; "
                               "0.78 for a card without one)")
    evaluate.add_argument("--all", action="store_true",
                          help="score every row, also those observed in the model's training period (by default "
                               "they are left out, with a warning)")
    evaluate.add_argument("--png", help="write a reliability diagram of the rows scored here, with each bin's count")
    evaluate.set_defaults(handler=_evaluate)

    card = commands.add_parser("card", help="print a model card's test metrics as Markdown")
    card.add_argument("card", nargs="?", default="models/lstm_omni.json")
    card.set_defaults(handler=_card)

    quality = commands.add_parser("quality", help="live quality of the confidence, from the outcome ledger")
    quality.add_argument("--window", default="24h", help="1h, 24h, 7d (or N m/h/d up to 90d)")
    quality.add_argument("--url", help="ledger database URL (default: AI_LEDGER_URL)")
    quality.add_argument("--threshold", type=float, help="default: AI_THRESHOLD, else each prediction's own (the "
                                                          "threshold it was decided at)")
    quality.add_argument("--version", help="the champion's model version (default: the registry's champion with "
                                           "AI_MODEL_REGISTRY, so right after a promotion the new one; else the "
                                           "version of the newest prediction)")
    quality.add_argument("--png", help="write a reliability diagram here")
    quality.add_argument("--json", action="store_true", help="machine-readable output")
    quality.set_defaults(handler=_quality)

    decisions = commands.add_parser("decisions", help="summarise a decision log (paper and live trades)")
    decisions.add_argument("path", nargs="?", help="default: AI_DECISION_LOG")
    decisions.add_argument("--json", action="store_true", help="machine-readable output")
    decisions.add_argument("--outbox", help="the outbox's database URL (default: AI_OUTBOX_URL, or where the "
                                            "service keeps it): reconciled and unreconciled intents")
    decisions.set_defaults(handler=_decisions)
    ledger = commands.add_parser("ledger", help="the outcome ledger's database").add_subparsers(
        dest="ledger_command", required=True)
    partition = ledger.add_parser("partition", help="partition by day a PostgreSQL ledger an earlier version made "
                                                    "unpartitioned (docs/scaling.md)")
    partition.add_argument("--url", help="ledger database URL (default: AI_LEDGER_URL)")
    partition.set_defaults(handler=_ledger_partition)
    stream = commands.add_parser("stream", help="the stream server: WebSocket on AI_STREAM_PORT, beside the HTTP "
                                                "service (docs/streaming.md)")
    stream.set_defaults(handler=_stream)

    routes = commands.add_parser("routes", help="the route table: every route with its methods, kind (fast path or "
                                                "Flask view), auth, error shape and whether it is counted")
    routes.add_argument("--json", action="store_true", help="machine-readable output")
    routes.set_defaults(handler=_routes)
    add_registry_commands(commands)
    return parser


# omni_mev.metrics.MULTIPROC_VARIABLE, spelt out: importing omni_mev.metrics would import prometheus_client, which
# reads the variable once, on import.
METRICS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `omni-mev` console script."""
    from omni_mev.logs import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    if args.handler is not _stream:
        # A one-off command serves no metrics, and its files would outlive it in the service's multiprocess
        # directory (which only gunicorn's master creates): its metrics stay in its own memory.
        os.environ.pop(METRICS_VARIABLE, None)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
