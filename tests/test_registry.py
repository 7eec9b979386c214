"""The model registry: versions and aliases, the promotion gate, rollback, retraining failures, and all of it
through a running service under a request stream."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omni_mev.config import ConfigError, load_settings
from omni_mev.ledger.store import Outcome, SqlLedger
from omni_mev.registry.gate import GateRules, compare, paired_auc
from omni_mev.registry.serving import with_registry_models
from omni_mev.registry.store import Registry, RegistryError
from omni_mev.runtime.base import version_of
from tests.conftest import MODELS, ROOT
from tests.servers import Gunicorn, Stream, http, versions, wait_until
from tests.test_ledger import row

SHIPPED = version_of((MODELS / "lstm_omni.onnx").read_bytes())


def uninformative_model(directory: Path) -> str:
    """A valid model that reads only the time of day: no better than chance at judging a trade."""
    from onnx import TensorProto, helper

    directory.mkdir(parents=True, exist_ok=True)
    constants = [helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
                 for name, values in (("starts", [-1, 5]), ("ends", [2**62, 6]), ("axes", [1, 2]), ("shape", [-1, 1]))]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["features", "starts", "ends", "axes"], ["time_of_day"]),
         helper.make_node("Reshape", ["time_of_day", "shape"], ["flat"]),
         helper.make_node("Sigmoid", ["flat"], ["confidence"])],
        "uninformative",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch", 1])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    data = model.SerializeToString()
    (directory / "lstm_omni.onnx").write_bytes(data)
    (directory / "lstm_omni.json").write_text(json.dumps({"family": "uninformative"}))
    return version_of(data)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry")
    registry.register(MODELS, user="test")
    registry.assign("champion", SHIPPED, user="test")
    return registry


# The registry on disk


def test_register_copies_the_model_its_weights_and_card(registry):
    version = registry.get(SHIPPED)
    for name in ("lstm_omni.onnx", "lstm_omni.pt", "lstm_omni.json"):
        assert (version.path / name).read_bytes() == (MODELS / name).read_bytes()
    assert version.card["version"].startswith(SHIPPED)
    again = registry.register(MODELS, user="test")  # registering twice changes nothing
    assert again.version == SHIPPED and len(registry.versions()) == 1
    assert [e["event"] for e in registry.history()] == ["register", "set_champion"]


def test_aliases_are_links_to_whole_version_directories(registry, tmp_path):
    assert os.readlink(registry.root / "champion") == f"versions/{SHIPPED}"
    assert registry.resolve("champion").onnx.resolve() == (registry.root / "versions" / SHIPPED / "lstm_omni.onnx")
    assert registry.alias("challenger") is None
    with pytest.raises(RegistryError, match="no version"):
        registry.assign("challenger", "0123456789ab")


def test_promote_and_rollback_walk_the_champions_back(registry, tmp_path):
    with pytest.raises(RegistryError, match="no challenger"):
        registry.promote(forced=False)
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    other = uninformative_model(tmp_path / "other")
    third = registry.register(tmp_path / "other").version
    assert third == other
    registry.assign("challenger", other)
    assert registry.promote(forced=True, user="alice") == other
    assert registry.aliases() == {"champion": other, "challenger": None}
    event = registry.history()[-1]
    assert (event["event"], event["forced"], event["user"], event["from"]) == ("promote", True, "alice", SHIPPED)
    assert registry.rollback(user="bob") == (other, SHIPPED)
    assert registry.alias("champion") == SHIPPED and registry.previous_champions() == []
    with pytest.raises(RegistryError):
        registry.rollback()


def test_settings_serve_the_champion_and_shadow_the_challenger(registry, tmp_path):
    settings = with_registry_models(load_settings({"AI_MODEL_REGISTRY": registry.root}))
    assert settings.model_path == registry.root / "versions" / SHIPPED / "lstm_omni.onnx"
    assert settings.fallback_weights_path.parent == settings.model_path.parent  # one version's files
    assert settings.shadow_model_path is None
    challenger = uninformative_model(tmp_path / "m")
    registry.register(tmp_path / "m")
    registry.assign("challenger", challenger)
    shadow = with_registry_models(load_settings({"AI_MODEL_REGISTRY": registry.root})).shadow_model_path
    assert shadow == registry.root / "versions" / challenger / "lstm_omni.onnx"
    with pytest.raises(ConfigError, match="unset AI_MODEL_PATH"):
        load_settings({"AI_MODEL_REGISTRY": registry.root, "AI_MODEL_PATH": MODELS / "lstm_omni.onnx"})
    with pytest.raises(ConfigError, match="has no champion"):
        with_registry_models(load_settings({"AI_MODEL_REGISTRY": tmp_path / "empty"}))


# The gate on ledger records


def _ledger_with(tmp_path: Path, champion: np.ndarray, challenger: np.ndarray, y: np.ndarray,
                 shadow_version: str = "challenger01", pnl: np.ndarray | None = None) -> SqlLedger:
    ledger = SqlLedger(f"sqlite:///{tmp_path / 'gate.db'}")
    now = time.time()
    rows = [row(f"g-{i}", float(c), at=now - 100 + i * 1e-3)._replace(model_version="champion0001",
                                                                   shadow_confidence=float(s),
                                                                   shadow_version=shadow_version)
            for i, (c, s) in enumerate(zip(champion, challenger))]
    ledger.record(rows)
    ledger.flush()
    ledger.add_outcomes([Outcome(f"g-{i}", True, bool(label), None if pnl is None else float(pnl[i]), now)
                         for i, label in enumerate(y)])
    return ledger


def _scores(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < p).astype(int)
    noisy = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 1.5, n))))
    return p, noisy, y


def test_gate_accepts_a_better_challenger_and_refuses_a_worse_one(tmp_path):
    good, noisy, y = _scores(1)
    ledger = _ledger_with(tmp_path, champion=noisy, challenger=good, y=y)
    records = ledger.records(0)
    better = compare(records, "champion0001", "challenger01", GateRules(min_outcomes=2000))
    assert better.passed and better.outcomes == 3000
    assert better.figures["challenger"]["auc"] > better.figures["champion"]["auc"] + 0.05
    # The same better model, without enough outcomes yet: refused on that rule alone.
    early = compare(records, "champion0001", "challenger01", GateRules(min_outcomes=4000))
    assert not early.passed
    assert [c["rule"] for c in early.checks if not c["passed"]] == ["outcomes"]
    # Only predictions where this champion served and this challenger was the shadow count.
    assert compare(records, "champion0001", "someone-else", GateRules(min_outcomes=1)).outcomes == 0


def test_the_paired_auc_gain_and_its_delong_error_match_a_paired_bootstrap():
    from sklearn.metrics import roc_auc_score

    good, noisy, y = _scores(4, n=2000)
    noisy = np.round(noisy, 2)  # ties, as served confidences have
    paired = paired_auc(y, noisy, good)
    assert paired["champion"] == pytest.approx(roc_auc_score(y, noisy), abs=1e-12)
    assert paired["challenger"] == pytest.approx(roc_auc_score(y, good), abs=1e-12)
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(300):  # the same resampled outcomes for both models: a paired bootstrap
        pick = rng.integers(0, len(y), len(y))
        gains.append(roc_auc_score(y[pick], good[pick]) - roc_auc_score(y[pick], noisy[pick]))
    assert paired["standard_error"] == pytest.approx(np.std(gains), rel=0.2)
    assert paired_auc(y, good, good)["standard_error"] == 0.0  # the same model: no gain, no doubt
    assert paired_auc(np.ones(10), good[:10], noisy[:10]) is None


def test_the_gate_promotes_nothing_on_noise_or_on_too_few_successes(tmp_path):
    """Two models as good as each other: on a few hundred outcomes the challenger can gain more AUC than the rule
    asks by chance alone; the paired test says it cannot be told from noise. A truly better model with too few
    successes waits for them."""
    lenient = dict(min_outcomes=100, min_positives=10, max_brier_increase=1.0, max_ece_increase=1.0)
    rng = np.random.default_rng(11)
    for _ in range(50):  # draws until chance favours the challenger by more than min_auc_gain
        p = rng.uniform(0.05, 0.95, 400)
        y = (rng.uniform(size=400) < p).astype(int)
        champion, challenger = (1 / (1 + np.exp(-(np.log(p / (1 - p)) + rng.normal(0, 1.5, 400)))) for _ in "ab")
        paired = paired_auc(y, champion, challenger)
        if paired["gain"] >= 0.02:
            break
    records = _ledger_with(tmp_path / "noise", champion=champion, challenger=challenger, y=y).records(0)
    noise = compare(records, "champion0001", "challenger01", GateRules(**lenient))
    assert noise.figures["paired_auc"]["gain"] >= 0.02 and not noise.passed
    assert [c["rule"] for c in noise.checks if not c["passed"]] == ["auc"]
    assert "sure it is above" in noise.render()
    # A real gain on the same number of outcomes passes the same rules.
    good, noisy, y = _scores(5, n=400)
    real = compare(_ledger_with(tmp_path / "real", champion=noisy, challenger=good, y=y).records(0),
                   "champion0001", "challenger01", GateRules(**lenient))
    assert real.passed and real.figures["paired_auc"]["lower_bound"] > 0
    rare = (y == 1) & (np.arange(len(y)) % 10 != 0)  # keep one success in ten
    y_rare = np.where(rare, 0, y)
    few = compare(_ledger_with(tmp_path / "few", champion=noisy, challenger=good, y=y_rare).records(0),
                  "champion0001", "challenger01", GateRules(**{**lenient, "min_positives": 100}))
    assert few.positives == int(y_rare.sum()) < 100
    assert "positives" in [c["rule"] for c in few.checks if not c["passed"]]


def test_the_gate_compares_each_models_decisions_at_its_own_threshold(tmp_path):
    """The same better ranking; the realised PnL of what each model would trade at its own threshold decides too:
    a challenger whose threshold makes it trade at a loss is refused on that rule alone."""
    good, noisy, y = _scores(3)
    pnl = np.where(y == 1, 10.0, -20.0)
    records = _ledger_with(tmp_path, champion=noisy, challenger=good, y=y, pnl=pnl).records(0)
    sensible = compare(records, "champion0001", "challenger01", GateRules(min_outcomes=100),
                       thresholds={"champion": 0.6, "challenger": 0.6})
    decisions = sensible.figures["challenger"]["decisions"]
    assert sensible.passed and decisions["threshold"] == 0.6 and decisions["approved"] > 0
    assert decisions["realised_pnl_usd"] > sensible.figures["champion"]["decisions"]["realised_pnl_usd"]
    reckless = compare(records, "champion0001", "challenger01", GateRules(min_outcomes=100),
                       thresholds={"champion": 0.6, "challenger": 0.0})  # trades everything, failures included
    assert [c["rule"] for c in reckless.checks if not c["passed"]] == ["decisions"]
    assert "realised PnL" in reckless.render()


def test_gate_refuses_a_challenger_that_is_worse_on_any_rule(tmp_path):
    good, noisy, y = _scores(2)
    ledger = _ledger_with(tmp_path, champion=good, challenger=noisy, y=y)
    result = compare(ledger.records(0), "champion0001", "challenger01", GateRules(min_outcomes=100))
    assert not result.passed
    failed = {c["rule"] for c in result.checks if not c["passed"]}
    assert {"auc", "brier"} <= failed and "outcomes" not in failed
    text = result.render()
    assert "FAIL" in text and "does not beat the champion" in text
    # Each rule is configurable: allowing a large loss lets the same models through.
    lenient = GateRules(min_outcomes=100, min_auc_gain=-1.0, max_brier_increase=1.0, max_ece_increase=1.0)
    assert compare(ledger.records(0), "champion0001", "challenger01", lenient).passed


# Operator commands


def test_rollback_undoes_any_change_of_champion_and_every_change_names_its_user(registry, tmp_path):
    """`models register --as champion` is a change of champion like a promotion: rollback undoes it. --user is
    recorded on a registration as on a promotion."""
    other = uninformative_model(tmp_path / "other")
    env = {"AI_MODEL_REGISTRY": str(registry.root), "OMNI_MEV_ENV_FILE": "/nonexistent"}
    registered = omni_mev("models", "register", str(tmp_path / "other"), "--as", "champion", "--user", "carol",
                          env=env)
    assert registered.returncode == 0, registered.stderr
    assert [(e["event"], e["user"]) for e in registry.history()[-2:]] == [("register", "carol"),
                                                                           ("set_champion", "carol")]
    rolled = omni_mev("rollback", "--user", "dave", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert f"{SHIPPED} is the champion again (was {other})" in rolled.stdout
    assert registry.alias("champion") == SHIPPED
    assert (registry.history()[-1]["event"], registry.history()[-1]["user"]) == ("rollback", "dave")
    again = omni_mev("rollback", env=env)  # the first champion was set from none: nothing earlier
    assert again.returncode == 2 and "no earlier champion" in again.stderr


def test_operator_commands_run_without_the_metrics_directory(registry, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set (as the image sets it) but never created (only gunicorn's master makes it):
    retrain and promote work, and leave nothing there."""
    other = uninformative_model(tmp_path / "other")
    registry.register(tmp_path / "other", user="test")
    registry.assign("challenger", other, user="test")
    absent = tmp_path / "metrics"
    env = {"AI_MODEL_REGISTRY": str(registry.root), "OMNI_MEV_ENV_FILE": "/nonexistent",
           "AI_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "PROMETHEUS_MULTIPROC_DIR": str(absent)}
    retrain = omni_mev("retrain", env=env)
    assert "Traceback" not in retrain.stderr and json.loads(retrain.stdout.splitlines()[-1])["action"], retrain.stderr
    promoted = omni_mev("promote", "--force", env=env)
    assert promoted.returncode == 0 and "Traceback" not in promoted.stderr, promoted.stderr
    assert registry.alias("champion") == other and not absent.exists()


@pytest.mark.parametrize("command", [("promote", "--force"), ("rollback",), ("models",), ("retrain",)])
def test_a_registry_database_that_is_down_is_one_line_and_exit_2(registry, tmp_path, command):
    from tests.servers import free_port

    env = {"AI_MODEL_REGISTRY": str(registry.root), "OMNI_MEV_ENV_FILE": "/nonexistent",
           "AI_MODEL_REGISTRY_DB": f"postgresql+psycopg://omni@127.0.0.1:{free_port()}/registry",
           "AI_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = omni_mev(*command, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("omni-mev ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "AI_MODEL_REGISTRY_DB" in errors[0] and "cannot be reached" in errors[0]


# Through the running service


def omni_mev(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omni_mev.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def drive(server: Gunicorn, prefix: str, n: int, seed: int) -> None:
    """n simulated opportunities with ids, scored by the service; every outcome posted."""
    from bench.closed_loop import post_outcomes, score_stream, windows
    from omni_mev.client import Client
    from omni_mev.training.simulate import simulate

    stream = simulate(n, seed=seed)
    ids = [f"{prefix}-{i}" for i in range(n)]
    with Client(server.url, timeout=60) as client:
        score_stream(client, windows(stream.features), ids)
        post_outcomes(client, ids, stream)


def test_promotion_gate_rollback_and_reload_through_the_service_under_load(registry, tmp_path):
    weak = uninformative_model(tmp_path / "weak")
    registry.register(tmp_path / "weak", user="test")
    # The weak model serves; the shipped one waits as the challenger.
    registry.assign("champion", weak, user="test")
    registry.assign("challenger", SHIPPED, user="test")
    env = {"AI_MODEL_REGISTRY": str(registry.root), "AI_PROMOTE_MIN_OUTCOMES": "1000",
           "OMNI_MEV_ENV_FILE": "/nonexistent"}
    with Gunicorn(env) as server, Stream(server, limit=200_000, seconds=300) as stream:
        assert versions(server) == {weak}
        status = server.get("/status")[1]
        assert status["shadow_version"] == SHIPPED and status["model_family"] == "uninformative"
        cli_env = {**env, "AI_LEDGER_URL": server.ledger_url}
        # Every outcome was stored (drive raises otherwise), so the predictions they answer are in the ledger.
        drive(server, "better", 2500, seed=11)
        promoted = omni_mev("promote", env=cli_env)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "beats the champion" in promoted.stdout and "promoted " + SHIPPED in promoted.stdout
        wait_until(lambda: versions(server) == {SHIPPED}, 30, what="the promoted champion serving")
        status = server.get("/status")[1]
        assert status["shadow_version"] is None and status["model_family"] == "lstm"
        assert status["recommended_threshold"] == json.loads((MODELS / "lstm_omni.json").read_text())[
            "thresholds"]["recommended"]  # the card came with it
        stream.advance(50)

        # A worse challenger is refused, and recorded; --force promotes it and says who did.
        assert omni_mev("models", "register", str(tmp_path / "weak"), "--as", "challenger",
                        env=cli_env).returncode == 0
        wait_until(lambda: server.get("/status")[1]["shadow_version"] == weak, 30, what="the challenger shadowing")
        drive(server, "worse", 2500, seed=12)
        refused = omni_mev("promote", env=cli_env)
        assert refused.returncode == 1 and "does not beat the champion" in refused.stdout
        assert registry.alias("champion") == SHIPPED and registry.history()[-1]["event"] == "promotion_refused"
        forced = omni_mev("promote", "--force", "--user", "alice", env=cli_env)
        assert forced.returncode == 0 and "FORCED" in forced.stdout
        event = registry.history()[-1]
        assert (event["event"], event["forced"], event["user"]) == ("promote", True, "alice")
        wait_until(lambda: versions(server) == {weak}, 30, what="the forced champion serving")
        stream.advance(50)

        rolled = omni_mev("rollback", env=cli_env)
        assert rolled.returncode == 0 and f"{SHIPPED} is the champion again" in rolled.stdout
        wait_until(lambda: versions(server) == {SHIPPED}, 30, what="the previous champion serving again")
        stream.advance(50)
        listing = json.loads(omni_mev("models", "--json", env=cli_env).stdout)
    assert stream.failures == [] and stream.ok > 200  # no request failed across three reloads
    assert listing["aliases"] == {"champion": SHIPPED, "challenger": None}
    live = {v["version"]: v["live"] for v in listing["versions"]}
    assert live[SHIPPED]["served"]["labelled"] >= 2500 and live[SHIPPED]["shadow"]["labelled"] >= 2500
    assert live[SHIPPED]["served"]["auc"] > live[weak]["served"]["auc"] + 0.1
    assert [e["event"] for e in listing["history"]][-3:] == ["promotion_refused", "promote", "rollback"]


def test_failed_retraining_leaves_the_champion_serving_and_shows_in_metrics(registry):
    env = {"AI_MODEL_REGISTRY": str(registry.root), "OMNI_MEV_ENV_FILE": "/nonexistent"}
    with Gunicorn(env, workers=1) as server:
        result = omni_mev("retrain", "--now", env={**env, "AI_LEDGER_URL": server.ledger_url})
        assert result.returncode == 1
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["action"] == "failed" and "AI_RETRAIN_MIN_OUTCOMES" in summary["detail"]
        assert "retraining failed" in result.stderr and "Traceback" not in result.stderr  # an expected failure
        assert registry.aliases() == {"champion": SHIPPED, "challenger": None}
        assert registry.history()[-1]["event"] == "retrain_failed"
        metrics = http("GET", f"http://127.0.0.1:{server.metrics_port}/metrics")[1]
        assert 'ai_retrain_runs_total{result="failed"} 1.0' in metrics
        assert f'ai_model_alias{{alias="champion",version="{SHIPPED}"}} 1.0' in metrics
        assert versions(server) == {SHIPPED}


def test_retrain_waits_for_the_gate_while_a_challenger_collects_outcomes(registry, tmp_path):
    waiting = uninformative_model(tmp_path / "w")
    registry.register(tmp_path / "w")
    registry.assign("challenger", waiting)
    env = {"AI_MODEL_REGISTRY": str(registry.root), "OMNI_MEV_ENV_FILE": "/nonexistent",
           "AI_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    result = omni_mev("retrain", env=env)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0 and summary["action"] == "waiting" and summary["gate"]["outcomes"] == 0


def test_the_loop_retrains_as_outcomes_accumulate_and_when_the_market_shifts(registry, tmp_path):
    """With the default triggers (the schedule far off): a challenger trained on 2,000 outcomes is followed by
    another once 1,000 more are labelled (AI_RETRAIN_GROWTH=0.5), and sooner if the successes the champion served
    depart from what its confidences expect."""
    from omni_mev.registry.retraining import triggers

    registry.record({"event": "retrain", "version": SHIPPED, "user": "test", "rows": 2000})
    settings = load_settings({"AI_MODEL_REGISTRY": registry.root, "AI_RETRAIN_MIN_OUTCOMES": 500,
                              "OMNI_MEV_ENV_FILE": "/nonexistent"})
    rng = np.random.default_rng(21)
    start = time.time() + 1

    def ledger_with(n: int, lift: float, name: str) -> SqlLedger:
        ledger = SqlLedger(f"sqlite:///{tmp_path / name}")
        p = rng.uniform(0.05, 0.6, n)
        y = rng.uniform(size=n) < np.clip(p + lift, 0, 1)
        ledger.record([row(f"{name}-{i}", float(c), at=start + i * 1e-3)._replace(model_version=SHIPPED)
                       for i, c in enumerate(p)])
        ledger.flush()
        ledger.add_outcomes([Outcome(f"{name}-{i}", True, bool(label), None, start + 10) for i, label in enumerate(y)])
        return ledger

    now = start + 60
    assert triggers(settings, registry, ledger_with(900, 0.0, "steady.db"), now) == []
    (grown,) = triggers(settings, registry, ledger_with(1100, 0.0, "grown.db"), now)
    assert grown.startswith("growth: 1100 labelled outcomes since challenger") and "2000 rows" in grown
    (shift,) = triggers(settings, registry, ledger_with(600, 0.2, "shifted.db"), now)
    assert shift.startswith("shift: ") and "standard errors" in shift
    # A shift with too few outcomes to train on yet fires nothing (the run would only fail).
    wanting = load_settings({"AI_MODEL_REGISTRY": registry.root, "AI_RETRAIN_MIN_OUTCOMES": 700,
                             "OMNI_MEV_ENV_FILE": "/nonexistent"})
    assert triggers(wanting, registry, ledger_with(600, 0.2, "early.db"), now) == []
    # Off, each of them.
    quiet = load_settings({"AI_MODEL_REGISTRY": registry.root, "AI_RETRAIN_MIN_OUTCOMES": 500,
                           "AI_RETRAIN_GROWTH": 0, "AI_RETRAIN_SHIFT_Z": 0, "OMNI_MEV_ENV_FILE": "/nonexistent"})
    assert triggers(quiet, registry, ledger_with(1100, 0.2, "off.db"), now) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_retraining_timer_units_verify(tmp_path):
    for name in ("omni-mev-retrain.service", "omni-mev-retrain.timer", "omni-mev.service"):
        text = (ROOT / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/omni-mev", str(ROOT)))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "omni-mev-retrain.timer"),
                             str(tmp_path / "omni-mev-retrain.service")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    timer = (ROOT / "systemd" / "omni-mev-retrain.timer").read_text()
    assert "OnCalendar=hourly" in timer and "Persistent=true" in timer


# One retrainer at a time

# Another host's retrainer: takes the lock, says so, holds it until its stdin closes (or it is killed).
HOLD_THE_LOCK = """
import sys
from pathlib import Path
from omni_mev.registry.election import sole_retrainer
with sole_retrainer(sys.argv[1], Path(sys.argv[2])) as other:
    print("held" if other is None else "busy", flush=True)
    sys.stdin.read()
"""


def _retrain_action(env: dict[str, str]) -> dict:
    run = omni_mev("retrain", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_one_retrainer_at_a_time_the_others_say_who_and_exit_cleanly(registry, tmp_path, database):
    """While one retrainer holds the lock, `omni-mev retrain` elsewhere does nothing, names the holder and exits
    0; when the holder dies, even killed, the lock is free again (PostgreSQL: the advisory lock of a fleet that
    shares the ledger; SQLite: a file lock in the registry, for one host)."""
    from contextlib import ExitStack

    from tests.servers import PostgresServer

    with ExitStack() as stack:
        ledger_url = (stack.enter_context(PostgresServer()).url if database == "postgresql"
                      else f"sqlite:///{tmp_path / 'ledger.db'}")
        env = {"AI_MODEL_REGISTRY": str(registry.root), "AI_LEDGER_URL": ledger_url,
               "OMNI_MEV_ENV_FILE": "/nonexistent"}
        holder = stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_LOCK, ledger_url, str(registry.root)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}))
        assert holder.stdout.readline().strip() == "held"
        busy = _retrain_action(env)
        assert busy["action"] == "busy" and f"(pid {holder.pid})" in busy["detail"], busy
        holder.kill()
        holder.wait(timeout=10)
        wait_until(lambda: _retrain_action(env)["action"] == "not_due", 30, what="the lock freed by the holder's end")
    assert "busy" not in [event["event"] for event in registry.history()]


# One registry for every host


def test_a_registry_in_a_shared_database_is_one_registry_for_every_host(tmp_path):
    """Two hosts (two Registry objects: the same model storage, the same PostgreSQL): what one registers,
    assigns, promotes and rolls back, the other reads at once, with one history; configuration refuses a
    database that cannot hold an advisory lock."""
    from tests.servers import PostgresServer

    weak = uninformative_model(tmp_path / "weak")
    with PostgresServer() as postgres:
        host_a, host_b = (Registry(tmp_path / "shared", postgres.url) for _ in range(2))
        host_a.register(MODELS, user="a")
        host_a.register(tmp_path / "weak", user="a")
        host_a.assign("champion", weak, user="a")
        host_a.assign("challenger", SHIPPED, user="a")
        assert host_b.aliases() == {"champion": weak, "challenger": SHIPPED}
        settings = with_registry_models(load_settings({"AI_MODEL_REGISTRY": str(tmp_path / "shared"),
                                                       "AI_MODEL_REGISTRY_DB": postgres.url}))
        assert (settings.model_path, settings.shadow_model_path) == (host_b.resolve("champion").onnx,
                                                                     host_b.resolve("challenger").onnx)
        assert host_b.promote(forced=True, user="b") == SHIPPED
        assert host_a.aliases() == {"champion": SHIPPED, "challenger": None}
        assert host_a.rollback(user="a") == (SHIPPED, weak)
        assert host_b.alias("champion") == weak
        events = [(e["event"], e["user"]) for e in host_b.history()]
        assert events[-3:] == [("set_challenger", "a"), ("promote", "b"), ("rollback", "a")]
        # Nothing went to the directory's own catalog.
        assert not (tmp_path / "shared" / "champion").exists() and not (tmp_path / "shared" / "history.jsonl").exists()
    with pytest.raises(ConfigError, match="AI_MODEL_REGISTRY_DB"):
        load_settings({"AI_MODEL_REGISTRY": str(tmp_path / "shared"),
                       "AI_MODEL_REGISTRY_DB": f"sqlite:///{tmp_path / 'aliases.db'}"})


def test_workers_start_on_the_last_resolved_champion_while_the_registry_database_is_down(tmp_path):
    """The shared registry's database goes down: a worker started then (a crash, a reload) serves the champion its
    host resolved last, and says so, instead of failing to boot and taking the host down."""
    from tests.servers import PostgresServer

    with PostgresServer() as postgres:
        registry = Registry(tmp_path / "shared", postgres.url)
        registry.register(MODELS, user="test")
        registry.assign("champion", SHIPPED, user="test")
        env = {"AI_MODEL_REGISTRY": str(registry.root), "AI_MODEL_REGISTRY_DB": postgres.url,
               "OMNI_MEV_ENV_FILE": "/nonexistent"}
        with Gunicorn(env) as server:
            assert versions(server) == {SHIPPED}
            postgres.kill()
            before = server.worker_pids()
            os.kill(min(before), signal.SIGKILL)
            wait_until(lambda: len(server.worker_pids() - before) == 1, 30, what="a replacement worker")
            server.signal(signal.SIGHUP)
            wait_until(lambda: not server.worker_pids() & before, 30, what="every worker replaced")
            wait_until(lambda: versions(server) == {SHIPPED}, 30, what="the new workers serving")
            assert server.alive() and "the champion this host resolved last" in server.output()


def test_register_if_unset_names_a_first_champion_and_never_replaces_one(registry, tmp_path):
    """What a deployment's pods run at every start: the shipped model becomes the champion of an empty registry,
    and a champion promoted since stays."""
    empty = tmp_path / "empty"
    env = {"AI_MODEL_REGISTRY": str(empty), "OMNI_MEV_ENV_FILE": "/nonexistent"}
    first = omni_mev("models", "register", str(MODELS), "--as", "champion", "--if-unset", env=env)
    assert first.returncode == 0 and f"registered {SHIPPED} as champion" in first.stdout, first.stderr
    other = uninformative_model(tmp_path / "other")
    env = {**env, "AI_MODEL_REGISTRY": str(registry.root)}
    kept = omni_mev("models", "register", str(tmp_path / "other"), "--as", "champion", "--if-unset", env=env)
    assert kept.returncode == 0 and f"champion stays {SHIPPED}" in kept.stdout
    assert registry.alias("champion") == SHIPPED and registry.get(other)
    assert Registry(empty).alias("champion") == SHIPPED
