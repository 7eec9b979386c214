"""`omni-mev models`, `promote`, `rollback` and `retrain`: the registry from the command line.

The registry is AI_MODEL_REGISTRY (from the environment or .env) unless
--registry names one. The running service needs no signal: it watches the
aliases and reloads within a second or two of a change. A problem (no
registry, no challenger, a database that cannot be reached) is one line on
stderr naming its setting, and exit code 2.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from omni_mev.config import ConfigError, Settings, load_settings, project_path, raw_values
from omni_mev.database import first_line
from omni_mev.registry.store import ALIASES, Registry, RegistryError, current_user

RELOAD_NOTE = "the service reloads within a few seconds (it watches the registry)"


def _root(args: argparse.Namespace) -> Path:
    if args.registry:
        return Path(args.registry).expanduser().resolve()
    value = raw_values().get("AI_MODEL_REGISTRY")
    if not value:
        raise ConfigError("no registry: set AI_MODEL_REGISTRY or give --registry DIR")
    return project_path(value)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings({"AI_MODEL_REGISTRY": str(_root(args))})


def _registry(args: argparse.Namespace) -> Registry:
    """The registry: --registry or AI_MODEL_REGISTRY, its aliases in AI_MODEL_REGISTRY_DB where set."""
    return Registry.of(_settings(args))


def _fail(command: str, error: Exception) -> int:
    print(f"omni-mev {command}: {error}", file=sys.stderr)
    return 2


@contextmanager
def _reaching(setting: str) -> Iterator[None]:
    """A database that cannot be reached, as a RegistryError naming the setting that names it (one line, not a
    driver's traceback)."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        raise RegistryError(f"the database {setting} names cannot be reached: {first_line(error)}") from None


def _models(args: argparse.Namespace) -> int:
    try:
        with _reaching("AI_MODEL_REGISTRY_DB"):
            registry = _registry(args)
            if args.models_command == "register":
                user = args.user or current_user()
                version = registry.register(Path(args.model_dir), user=user, note=args.note or "")
                assigned = bool(args.alias) and registry.assign(args.alias, version.version, user=user,
                                                                note=args.note or "", if_unset=args.if_unset)
                kept = f"; {args.alias} stays {registry.alias(args.alias)}" if args.alias and not assigned else ""
                print(f"registered {version.version}" + (f" as {args.alias}" if assigned else "") + kept)
                return 0
            listing = _listing(registry, args)
    except (ConfigError, RegistryError) as error:
        return _fail("models", error)
    print(json.dumps(listing, indent=2) if args.json else _render_listing(listing))
    return 0


def _listing(registry: Registry, args: argparse.Namespace) -> dict[str, Any]:
    """Versions with their card's figures and live figures, aliases, history."""
    from omni_mev.registry.gate import live_figures
    from omni_mev.training.report import served_row

    aliases = registry.aliases()
    records = _records(args)
    versions = []
    for version in registry.versions():
        card = version.card
        test = card["test_metrics"][served_row(card)] if "test_metrics" in card else {}
        versions.append({
            "version": version.version,
            "aliases": [name for name, target in aliases.items() if target == version.version],
            "family": card.get("family", "lstm"), "created_by": card.get("created_by"),
            "card_auc": test.get("auc_roc"), "card_ece": test.get("ece"),
            "live": live_figures(records, version.version) if records is not None else None,
        })
    return {"registry": str(registry.root), "aliases": aliases, "versions": versions,
            "previous_champions": registry.previous_champions(), "history": registry.history()[-args.history:],
            "live_window": args.window if records is not None else None}


def _records(args: argparse.Namespace) -> Any:
    """The ledger's recent records for the live figures, or None when there is no ledger to read."""
    from omni_mev.ledger.store import LedgerUnavailable, SqlLedger
    from omni_mev.windows import window_length

    try:
        url = _settings(args).ledger_url
    except ConfigError:
        url = None
    if url is None:
        return None
    ledger = SqlLedger(url)
    try:
        return ledger.records(time.time() - window_length(args.window))
    except LedgerUnavailable:
        return None
    finally:
        ledger.engine.dispose()


def _render_listing(listing: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"registry {listing['registry']}", ""]
    header = f"{'version':14}{'aliases':22}{'family':10}{'card AUC':>10}"
    if listing["live_window"]:
        header += f"{'live AUC served (n)':>22}{'live AUC shadow (n)':>22}"
    lines.append(header)
    for v in listing["versions"]:
        row = f"{v['version']:14}{','.join(v['aliases']) or '-':22}{v['family']:10}{cell(v['card_auc']):>10}"
        if v["live"] is not None:
            for role in ("served", "shadow"):
                figures = v["live"][role]
                row += f"{cell(figures['auc']) + ' (' + str(figures['labelled']) + ')':>22}"
        lines.append(row)
    if listing["live_window"]:
        lines.append(f"(live figures: labelled outcomes of the last {listing['live_window']})")
    lines += ["", "history (latest last):"]
    for event in listing["history"]:
        extra = " forced" if event.get("forced") else ""
        lines.append(f"  {event['at']}  {event['event']:15} {event.get('version') or '-':14} "
                     f"from {event.get('from') or '-':14} by {event.get('user', '?')}{extra}"
                     + (f"  ({event['reason']})" if event.get("reason") else ""))
    return "\n".join(lines)


def _promote(args: argparse.Namespace) -> int:
    from omni_mev.ledger.store import LedgerUnavailable, SqlLedger
    from omni_mev.registry.gate import GateRules, compare_live, own_thresholds

    try:
        with _reaching("AI_MODEL_REGISTRY_DB"):
            settings = _settings(args)
            registry = Registry.of(settings)
            champion, challenger = registry.alias("champion"), registry.alias("challenger")
            if challenger is None:
                raise RegistryError("there is no challenger to promote")
            if champion is None:
                raise RegistryError("there is no champion to compare the challenger with")
            rules = GateRules.from_settings(settings, window=args.window, min_outcomes=args.min_outcomes,
                                            min_auc_gain=args.min_auc_gain,
                                            max_brier_increase=args.max_brier_increase,
                                            max_ece_increase=args.max_ece_increase,
                                            min_positives=args.min_positives, auc_confidence=args.auc_confidence)
            if settings.ledger_url is None:
                raise RegistryError("the ledger is off (AI_LEDGER_URL=off): no live outcomes to compare on")
            thresholds = own_thresholds(registry, champion, challenger)
        with _reaching("AI_LEDGER_URL"):
            ledger = SqlLedger(settings.ledger_url)
            try:
                comparison = compare_live(ledger, champion, challenger, rules, thresholds=thresholds)
            finally:
                ledger.engine.dispose()
        print(comparison.render())
        user = args.user or current_user()
        with _reaching("AI_MODEL_REGISTRY_DB"):
            if not comparison.passed and not args.force:
                registry.record({"event": "promotion_refused", "version": challenger, "from": champion,
                                 "user": user, "comparison": comparison.to_dict()})
                print(f"\nnot promoted: {challenger} stays the challenger (--force promotes anyway, and says so "
                      "in the history)")
                return 1
            registry.promote(forced=not comparison.passed, user=user, comparison=comparison.to_dict())
    except (ConfigError, RegistryError, LedgerUnavailable) as error:
        return _fail("promote", error)
    print(f"\npromoted {challenger}" + (" (FORCED past the gate)" if not comparison.passed else "")
          + f"; {RELOAD_NOTE}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    try:
        with _reaching("AI_MODEL_REGISTRY_DB"):
            old, new = _registry(args).rollback(user=args.user or current_user())
    except (ConfigError, RegistryError) as error:
        return _fail("rollback", error)
    print(f"rolled back: {new} is the champion again (was {old or 'none'}); {RELOAD_NOTE}")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from omni_mev.registry.retraining import retrain_step

    try:
        with _reaching("AI_MODEL_REGISTRY_DB"):
            settings = _settings(args)
            registry = Registry.of(settings)
            registry.alias("champion")  # the registry answers before a run starts
    except (ConfigError, RegistryError) as error:
        return _fail("retrain", error)
    since = dt.datetime.fromisoformat(args.since).timestamp() if args.since else None
    overrides = {name: value for name, value in (("max_epochs", args.max_epochs),
                                                 ("batches_per_epoch", args.batches_per_epoch),
                                                 ("patience", args.patience), ("seed", args.seed)) if value is not None}
    result = retrain_step(settings, registry, force=args.now, since=since, config_overrides=overrides,
                          progress=lambda line: print(line, flush=True))
    summary: dict[str, Any] = {"action": result.action, "detail": result.detail, "version": result.version,
               "triggers": result.triggers}
    if result.comparison is not None:
        summary["gate"] = {"outcomes": result.comparison["outcomes"], "passed": result.comparison["passed"],
                           "figures": result.comparison["figures"]}
    print(json.dumps(summary))
    return 1 if result.failed else 0


def add_commands(commands: Any) -> None:
    """The registry's subcommands, on the `omni-mev` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", help="the registry directory (default: AI_MODEL_REGISTRY)")
    gate_flags = argparse.ArgumentParser(add_help=False)
    gate_flags.add_argument("--window", help="compare on outcomes of this recent window (default: AI_PROMOTE_WINDOW)")
    gate_flags.add_argument("--min-outcomes", type=int, help="default: AI_PROMOTE_MIN_OUTCOMES")
    gate_flags.add_argument("--min-positives", type=int, help="default: AI_PROMOTE_MIN_POSITIVES")
    gate_flags.add_argument("--min-auc-gain", type=float, help="default: AI_PROMOTE_MIN_AUC_GAIN")
    gate_flags.add_argument("--auc-confidence", type=float, help="default: AI_PROMOTE_AUC_CONFIDENCE")
    gate_flags.add_argument("--max-brier-increase", type=float, help="default: AI_PROMOTE_MAX_BRIER_INCREASE")
    gate_flags.add_argument("--max-ece-increase", type=float, help="default: AI_PROMOTE_MAX_ECE_INCREASE")

    models = commands.add_parser("models", parents=[common],
                                 help="registered versions, aliases, history and live figures")
    models.add_argument("--window", default="7d", help="live figures over this window (default 7d)")
    models.add_argument("--history", type=int, default=20, help="history events shown")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=_models, models_command=None)
    register = models.add_subparsers(dest="models_command").add_parser(
        "register", parents=[common], help="copy a trained model (DIR with lstm_omni.onnx, .pt, .json) in")
    register.add_argument("model_dir")
    register.add_argument("--as", dest="alias", choices=ALIASES, help="and point this alias at it")
    register.add_argument("--note", help="why, for the history")
    register.add_argument("--user", help="who registers (default: the invoking user)")
    register.add_argument("--if-unset", action="store_true",
                          help="point the alias only if it points nowhere yet (a deployment's first start)")

    promote = commands.add_parser("promote", parents=[common, gate_flags],
                                  help="the challenger becomes the champion if it beats it on live outcomes")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses (recorded)")
    promote.add_argument("--user", help="who promotes (default: the invoking user)")
    promote.set_defaults(handler=_promote)

    rollback = commands.add_parser("rollback", parents=[common],
                                   help="undo the last change of champion (a promotion, or models register --as "
                                        "champion): the previous champion serves again")
    rollback.add_argument("--user", help="who rolls back (default: the invoking user)")
    rollback.set_defaults(handler=_rollback)

    retrain = commands.add_parser("retrain", parents=[common],
                                  help="one step of automatic retraining: gate a waiting challenger, or train one")
    retrain.add_argument("--now", action="store_true", help="train a challenger now, whatever the triggers say")
    retrain.add_argument("--since", help="train on outcomes predicted since this RFC 3339 time "
                                         "(default: AI_RETRAIN_WINDOW back from now)")
    retrain.add_argument("--max-epochs", type=int)
    retrain.add_argument("--batches-per-epoch", type=int)
    retrain.add_argument("--patience", type=int)
    retrain.add_argument("--seed", type=int)
    retrain.set_defaults(handler=_retrain)
