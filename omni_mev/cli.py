"""The `omni-mev` command: train the model and inspect what the service recorded."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from omni_mev.training.train import TrainConfig, train

    config = TrainConfig(
        seed=args.seed,
        opportunities=args.opportunities,
        hidden_size=args.hidden_size,
        max_epochs=args.max_epochs,
        batches_per_epoch=args.batches_per_epoch,
        max_minutes=args.max_minutes,
    )
    command = "omni-mev " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    card = train(config, Path(args.output), Path(args.docs) if args.docs else None, command=command)
    lstm = card["test_metrics"]["lstm_with_history"]
    oracle = card["test_metrics"]["oracle"]
    print(json.dumps({
        "version": card["version_short"],
        "auc": round(lstm["auc_roc"], 4),
        "oracle_auc": round(oracle["auc_roc"], 4),
        "ece": round(lstm["ece"], 4),
        "recommended_threshold": card["thresholds"]["recommended"],
        "seconds": card["training_seconds"],
    }))
    return 0


def _card(args: argparse.Namespace) -> int:
    from omni_mev.training.report import markdown

    print(markdown(json.loads(Path(args.card).read_text())), end="")
    return 0


def _decisions(args: argparse.Namespace) -> int:
    from omni_mev.trading.summary import render, summarise

    if args.path:
        path = Path(args.path)
    else:
        from omni_mev.config import load_settings

        path = load_settings().decision_log_path
    if not path.is_file():
        print(f"omni-mev decisions: no such file: {path}", file=sys.stderr)
        return 2
    summary = summarise(path)
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
    try:
        report = quality_report(build_ledger(url, 0.0), args.window, threshold)
    except LedgerUnavailable as error:
        print(f"omni-mev quality: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report), end="\n" if args.json else "")
    if args.png:
        reliability_png(report, Path(args.png))
        print(f"reliability diagram: {args.png}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for all subcommands."""
    from omni_mev.training.train import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="omni-mev", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="simulate, train, calibrate, export to ONNX, write the card")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--opportunities", type=int, default=defaults.opportunities)
    train.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    train.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    train.add_argument("--batches-per-epoch", type=int, default=defaults.batches_per_epoch)
    train.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    train.add_argument("--output", default="models", help="folder for lstm_omni.{onnx,pt,json}")
    train.add_argument("--docs", default="docs", help="folder for reliability.png ('' to skip)")
    train.set_defaults(handler=_train)

    card = commands.add_parser("card", help="print a model card's test metrics as Markdown")
    card.add_argument("card", nargs="?", default="models/lstm_omni.json")
    card.set_defaults(handler=_card)

    quality = commands.add_parser("quality", help="live quality of the confidence, from the outcome ledger")
    quality.add_argument("--window", default="24h", help="1h, 24h, 7d (or N m/h/d up to 90d)")
    quality.add_argument("--url", help="ledger database URL (default: AI_LEDGER_URL)")
    quality.add_argument("--threshold", type=float, help="default: AI_THRESHOLD")
    quality.add_argument("--png", help="write a reliability diagram here")
    quality.add_argument("--json", action="store_true", help="machine-readable output")
    quality.set_defaults(handler=_quality)

    decisions = commands.add_parser("decisions", help="summarise a decision log (paper and live trades)")
    decisions.add_argument("path", nargs="?", help="default: AI_DECISION_LOG")
    decisions.add_argument("--json", action="store_true", help="machine-readable output")
    decisions.set_defaults(handler=_decisions)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `omni-mev` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("omni_mev").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
