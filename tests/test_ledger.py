"""The outcome ledger: on SQLite and on a real PostgreSQL, through the API and the real gunicorn."""
from __future__ import annotations

import base64
import http.client
import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from omni_mev.features import EXAMPLE_FEATURES
from omni_mev.ledger import schema
from omni_mev.ledger.schema import outcomes, predictions
from omni_mev.ledger import dead_letters, partitions
from omni_mev.ledger.store import (CONFLICT, DUPLICATE, INVALID, OBSERVED_AT_SKEW_S, STORED, UNKNOWN,
                                   LedgerUnavailable, Outcome, PredictionRow, SqlLedger)
from omni_mev.runtime.base import version_of
from tests.servers import Gunicorn, Nginx, PostgresServer, free_port, wait_until

EXAMPLE = list(EXAMPLE_FEATURES)


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return _emptied(request.getfixturevalue("postgres").url)


@pytest.fixture
def postgres_url(postgres):
    return _emptied(postgres.url)


def _emptied(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # each test starts from empty tables
        connection.execute(sa.text("DROP TABLE IF EXISTS predictions, outcomes"))
    engine.dispose()
    return url


def row(opportunity_id: str, confidence: float = 0.5, at: float | None = None, steps: int = 1) -> PredictionRow:
    window = np.tile(np.array(EXAMPLE, np.float32), (steps, 1))
    return PredictionRow(opportunity_id, time.time() if at is None else at, "predict", "SIMULATION", "onnx",
                         "bb504f0433ef", confidence, None, None, 0.78, confidence >= 0.78, None, steps,
                         window.tobytes())


def outcome(opportunity_id: str, success: bool | None = True, pnl: float | None = 1.5, executed: bool = True):
    return Outcome(opportunity_id, executed, success, pnl, time.time())


def test_latest_prediction_per_opportunity_with_its_window_and_outcome(ledger_url):
    ledger = SqlLedger(ledger_url)
    ledger.record([row("a", 0.2), row("b", 0.9, steps=4)])
    ledger.record([row("a", 0.3)])  # re-scored: the latest counts
    ledger.flush()
    assert [r.status for r in ledger.add_outcomes([outcome("a", False, -2.0)])] == [STORED]
    records = ledger.records(time.time() - 60)
    assert records.opportunity_id == ["b", "a"] or records.opportunity_id == ["a", "b"]
    by_id = dict(zip(records.opportunity_id, range(len(records))))
    a, b = by_id["a"], by_id["b"]
    assert records.confidence[a] == pytest.approx(0.3) and records.success[a] == 0.0
    assert records.realised_pnl_usd[a] == -2.0 and np.isnan(records.success[b]) and not records.has_outcome[b]
    assert records.windows[b].shape == (4, 8) and records.windows[b][-1].tolist() == pytest.approx(EXAMPLE)
    assert records.profit_usd[b] == pytest.approx(EXAMPLE[0])


def test_outcomes_are_idempotent_conflicts_refused_unknown_listed(ledger_url):
    ledger = SqlLedger(ledger_url)
    ledger.record([row("x"), row("y"), row("z")])
    # Not flushed on purpose: an outcome may beat its prediction out of the queue.
    results = ledger.add_outcomes([outcome("x"), outcome("x"), outcome("y", executed=False, success=None, pnl=None),
                                   outcome("nope")])
    assert [(r.opportunity_id, r.status) for r in results] == [("x", STORED), ("x", DUPLICATE), ("y", STORED),
                                                               ("nope", UNKNOWN)]
    again = ledger.add_outcomes([outcome("x"), outcome("y", success=True), outcome("z", False)])
    assert [r.status for r in again] == [DUPLICATE, CONFLICT, STORED]
    with ledger.engine.connect() as connection:
        stored = {r.opportunity_id: r for r in connection.execute(sa.select(outcomes))}
    assert set(stored) == {"x", "y", "z"} and stored["y"].executed is False and stored["y"].success is None


def test_a_ledger_from_before_shadow_versions_gets_the_column(ledger_url):
    engine = sa.create_engine(ledger_url)
    schema.metadata.create_all(engine)
    with engine.begin() as connection:  # the tables as they were before the column existed
        connection.execute(sa.text(f"ALTER TABLE {schema.predictions.name} DROP COLUMN shadow_version"))
    engine.dispose()
    ledger = SqlLedger(ledger_url)
    ledger.record([row("upgraded")._replace(shadow_confidence=0.4, shadow_version="abcdef012345")])
    ledger.flush()
    records = ledger.records(0)
    assert records.shadow_version == ["abcdef012345"] and records.shadow_confidence.tolist() == [0.4]


def test_retention_removes_old_rows(ledger_url):
    ledger = SqlLedger(ledger_url, retention_days=1)
    ledger.record([row("old", at=time.time() - 3 * 86_400), row("new")])
    ledger.flush()
    ledger._purge_if_due()
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.select(predictions.c.opportunity_id)).scalars().all() == ["new"]


def test_retention_follows_the_service_clock_not_observed_at(ledger_url):
    """An outcome stays as long as its prediction, whatever it says it observed, so the first outcome keeps
    winning; one that claims 2001 for a fresh prediction is refused outright."""
    ledger = SqlLedger(ledger_url, retention_days=1)
    three_days_ago = time.time() - 3 * 86_400
    ledger.record([row("fresh"), row("stale", at=three_days_ago), row("claims-2001")])
    ledger.flush()
    behind = Outcome("fresh", True, True, 1.5, time.time() - 200)  # a client clock 200 s behind: in bounds
    results = ledger.add_outcomes([behind, Outcome("stale", True, True, 1.5, three_days_ago),
                                   Outcome("claims-2001", True, True, 1.5, 978_307_200.0)])
    assert [r.status for r in results] == [STORED, STORED, INVALID]
    ledger._purge_if_due()
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.select(outcomes.c.opportunity_id)).scalars().all() == ["fresh"]
    assert [r.status for r in ledger.add_outcomes([outcome("fresh", False, -1.0)])] == [CONFLICT]
    assert [r.status for r in ledger.add_outcomes([outcome("stale")])] == [UNKNOWN]  # its prediction is gone


def _partition_rows(url: str) -> dict[str, int]:
    """Each partition of predictions and the rows it holds."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            names = connection.execute(sa.text(
                "SELECT child.relname FROM pg_inherits JOIN pg_class child ON child.oid = pg_inherits.inhrelid "
                "WHERE pg_inherits.inhparent = 'predictions'::regclass")).scalars().all()
            return {name: connection.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar() for name in names}
    finally:
        engine.dispose()


def test_postgresql_keeps_predictions_in_a_partition_a_day_made_ahead_of_midnight(postgres_url):
    now = time.time()
    today, yesterday = partitions.day_of(now), partitions.day_of(now) - 1
    ledger = SqlLedger(postgres_url)
    ledger.record([row("today-1"), row("today-2"), row("yesterday", at=(yesterday + 0.5) * partitions.DAY_S)])
    ledger.flush()
    assert _partition_rows(postgres_url) == {partitions.name_of(yesterday): 1, partitions.name_of(today): 2,
                                             partitions.name_of(today + 1): 0}
    # Rows are read through the parent as before.
    assert sorted(ledger.records(0).opportunity_id) == ["today-1", "today-2", "yesterday"]


def test_retention_drops_the_days_wholly_past_its_horizon(postgres_url):
    now = time.time()
    ledger = SqlLedger(postgres_url, retention_days=1)
    inside = now - 0.5 * partitions.DAY_S  # within the day of retention
    past = now - 1.5 * partitions.DAY_S  # past it, on a day that may still hold rows within it
    gone = now - 3 * partitions.DAY_S
    ledger.record([row("new"), row("inside", at=inside), row("past", at=past), row("gone", at=gone)])
    ledger.flush()
    ledger._purge_if_due()
    left = _partition_rows(postgres_url)
    assert partitions.name_of(partitions.day_of(gone)) not in left
    # A day goes whole or not at all: its partition stays while any of it is within the horizon.
    past_day = partitions.day_of(past)
    straddles = (past_day + 1) * partitions.DAY_S > now - partitions.DAY_S
    assert (partitions.name_of(past_day) in left) == straddles
    assert set(_ledger_ids(postgres_url)) == {"new", "inside"} | ({"past"} if straddles else set())
    # The dropped day is made again if a row of it ever comes back.
    ledger.record([row("gone-again", at=gone)])
    ledger.flush()
    assert "gone-again" in _ledger_ids(postgres_url)


def test_a_ledger_made_unpartitioned_by_an_earlier_version_is_partitioned_by_one_command(postgres_url, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    engine = sa.create_engine(postgres_url)
    schema.metadata.create_all(engine)  # the table as earlier versions made it
    engine.dispose()
    now = time.time()
    letters = tmp_path / "letters.jsonl"
    ledger = SqlLedger(postgres_url, dead_letters=letters)
    assert not partitions.is_partitioned(ledger.engine)  # it works as it is meanwhile
    ledger.record([row("a", 0.2, at=now - 2 * partitions.DAY_S), row("b", 0.4), row("a", 0.6)])
    ledger.flush()
    assert [r.status for r in ledger.add_outcomes([outcome("a")])] == [STORED]

    def command() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "omni_mev.cli", "ledger", "partition", "--url", postgres_url],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    converted = command()
    assert converted.returncode == 0 and converted.stdout.strip() == "predictions partitioned by day: 3 rows moved"
    assert command().stdout.strip() == "predictions is partitioned already"
    assert partitions.is_partitioned(ledger.engine)
    assert sorted(_partition_rows(postgres_url).values()) == [1, 2]
    # The latest prediction of an id is still the latest, and rows written afterwards come after it.
    later = SqlLedger(postgres_url)
    later.record([row("b", 0.9)])
    later.flush()
    records = later.records(0)
    latest = dict(zip(records.opportunity_id, records.confidence.tolist()))
    assert latest == {"a": pytest.approx(0.6), "b": pytest.approx(0.9)}
    assert records.has_outcome[records.opportunity_id.index("a")]
    # A writer that started before the command finds out at its first row for a day without a partition: the
    # rows wait one retry, then land; none is set aside.
    ledger.record([row("tomorrow-but-one", at=(partitions.day_of(now) + 2.5) * partitions.DAY_S)])
    with pytest.raises(sa.exc.IntegrityError):
        ledger.flush()
    assert ledger.pending == 1
    ledger.flush()
    assert ledger.pending == 0 and "tomorrow-but-one" in _ledger_ids(postgres_url)
    assert not letters.exists()


def test_workers_making_the_same_partition_at_once_all_succeed(postgres_url):
    SqlLedger(postgres_url)  # the parent table
    engine = sa.create_engine(postgres_url)
    day = partitions.day_of(time.time()) + 3
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def make() -> None:
        barrier.wait()
        try:
            partitions.create(engine, day)
        except BaseException as error:  # noqa: BLE001 - the assertion below reports it
            errors.append(error)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    engine.dispose()
    assert errors == [] and partitions.name_of(day) in _partition_rows(postgres_url)


def test_a_report_holding_the_table_delays_a_new_partition_without_losing_rows(postgres_url, monkeypatch):
    """Making a partition needs the parent's lock; a long reader holding it makes the writer retry after a bounded
    wait, with its rows kept, instead of queueing every later reader behind it."""
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT_MS", 200)
    ledger = SqlLedger(postgres_url)
    engine = sa.create_engine(postgres_url)
    tomorrow_but_one = partitions.day_of(time.time()) + 2
    with engine.connect() as report:
        report.execute(sa.text("SELECT count(*) FROM predictions"))  # holds its lock until the transaction ends
        ledger.record([row("waits", at=tomorrow_but_one * partitions.DAY_S + 60)])
        with pytest.raises(sa.exc.OperationalError):
            ledger.flush()
        assert ledger.pending == 1 and ledger.problem == "cannot write (LockNotAvailable)"
        report.rollback()
    ledger.flush()
    engine.dispose()
    assert ledger.pending == 0 and ledger.problem is None and "waits" in _ledger_ids(postgres_url)


def test_observed_at_may_not_precede_the_prediction_beyond_the_skew(ledger_url):
    ledger = SqlLedger(ledger_url)
    scored = time.time()
    ledger.record([row("early", at=scored), row("skewed", at=scored), row("year-1", at=scored), row("fine")])
    ledger.flush()
    results = ledger.add_outcomes([
        Outcome("early", True, True, 1.0, scored - OBSERVED_AT_SKEW_S - 60),
        Outcome("skewed", True, True, 1.0, scored - OBSERVED_AT_SKEW_S + 60),  # a client clock a little behind
        Outcome("year-1", True, True, 1.0, -62_135_596_800.0),
        outcome("fine")])
    assert [r.status for r in results] == [INVALID, STORED, INVALID, STORED]
    assert "before the prediction it answers was scored" in results[0].message
    with ledger.engine.connect() as connection:
        assert set(connection.execute(sa.select(outcomes.c.opportunity_id)).scalars()) == {"skewed", "fine"}
    # Nothing was stored for a refused one: the first outcome in bounds is the one kept.
    assert [r.status for r in ledger.add_outcomes([outcome("early", False, -1.0)])] == [STORED]
    assert [r.status for r in ledger.add_outcomes([outcome("early", True, 1.0)])] == [CONFLICT]


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_of_its_batch_written(ledger_url, tmp_path):
    """One bad row used to send its whole batch back to the queue for ever; now it alone goes to the dead letters."""
    from omni_mev import metrics

    path = tmp_path / "dead" / "letters.jsonl"  # made when first needed
    ledger = SqlLedger(ledger_url, dead_letters=path)
    poison = [row("bad-null")._replace(confidence=None)]  # NOT NULL, on both databases
    if ledger_url.startswith("postgresql"):
        poison.append(row("bad\x00nul"))  # text PostgreSQL cannot store (the API refuses it before this)
    poison.append(row("bad-time")._replace(predicted_at=None))  # no time: NOT NULL (and no day's partition)
    good = [row(f"good-{i}") for i in range(11)]
    counted = metrics.LEDGER_DEAD_LETTERS.labels(table="predictions")._value.get()
    ledger.record(good[:4] + poison[:1] + good[4:8] + poison[1:] + good[8:])
    ledger.flush()
    wait_until(lambda: ledger.pending == 0 and len(dead_letters.read(path)) == len(poison), 10,
               what="the batch written, the refused rows set aside")
    assert sorted(r.opportunity_id for r in _ledger_rows(ledger_url)) == sorted(r.opportunity_id for r in good)
    letters = dead_letters.read(path)
    assert [letter["row"]["opportunity_id"] for letter in letters] == [r.opportunity_id for r in poison]
    assert all(letter["table"] == "predictions" and letter["error"] for letter in letters)
    assert base64.b64decode(letters[0]["row"]["features"]["base64"]) == poison[0].features
    assert metrics.LEDGER_DEAD_LETTERS.labels(table="predictions")._value.get() == counted + len(poison)
    # The ledger goes on: no problem reported, later rows written, outcomes for the good rows stored.
    assert ledger.problem is None
    ledger.record([row("after")])
    ledger.flush()
    assert [r.status for r in ledger.add_outcomes([outcome("good-0"), outcome("after")])] == [STORED, STORED]


def test_an_outcome_the_database_refuses_is_set_aside_and_the_others_stored(ledger_url, tmp_path):
    path = tmp_path / "letters.jsonl"
    ledger = SqlLedger(ledger_url, dead_letters=path)
    ledger.record([row("kept-a"), row("refused"), row("kept-b")])
    ledger.flush()
    broken = Outcome("refused", None, True, 1.0, time.time())  # executed is NOT NULL
    results = ledger.add_outcomes([outcome("kept-a"), broken, outcome("kept-b")])
    assert [r.status for r in results] == [STORED, INVALID, STORED]
    assert "refused this outcome" in results[1].message and results[1].field is None
    (letter,) = dead_letters.read(path)
    assert letter["table"] == "outcomes" and letter["row"]["opportunity_id"] == "refused"
    # Nothing was stored for it: a correct outcome is still the first.
    assert [r.status for r in ledger.add_outcomes([outcome("refused")])] == [STORED]


def test_a_sqlite_ledger_in_a_directory_that_does_not_exist_yet_works(tmp_path):
    """As on a fresh clone, where the default ledger's logs/ is missing."""
    url = f"sqlite:///{tmp_path / 'new' / 'deeper' / 'ledger.db'}"
    with Gunicorn({"AI_LEDGER_URL": url}, workers=1) as server:
        opportunity_id = _new_ids(1)[0]
        assert server.post("/predict", {"features": EXAMPLE, "opportunity_id": opportunity_id})[0] == 200
        # One worker: the outcome's request writes that worker's queued prediction first.
        status, body, _ = server.post("/outcomes", {"opportunity_id": opportunity_id, "success": True,
                                                    "realised_pnl_usd": 3.1})
        assert status == 201 and body["result"] == "stored"


def test_status_never_claims_a_ledger_that_cannot_write(make_app):
    working = make_app().test_client()
    working.post("/predict", json={"features": EXAMPLE, "opportunity_id": "status-1"})
    working.application.extensions["omni_mev.predictor"].ledger.flush()
    assert working.get("/status").json["ledger"] == {"enabled": True, "writable": True, "problem": None,
                                                      "pending": 0, "oldest_pending_age_s": None}
    nowhere = make_app(AI_LEDGER_URL=f"postgresql+psycopg://omni@127.0.0.1:{free_port()}/postgres")
    ledger = nowhere.test_client().get("/status").json["ledger"]
    assert ledger["enabled"] is True and ledger["writable"] is False
    assert ledger["problem"] == "database unreachable (OperationalError)"


def test_a_ledger_directory_that_cannot_be_made_stops_start_up_naming_the_setting(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    server = Gunicorn({"AI_LEDGER_URL": f"sqlite:///{blocker / 'ledger.db'}"}, workers=1)
    try:
        assert server.start(wait=False).proc.wait(30) == 2
        line = server.output().strip().splitlines()[-1]
    finally:
        server.__exit__(None, None, None)
    assert line.startswith("omni-mev: configuration error: AI_LEDGER_URL=") and "cannot create" in line


@pytest.mark.parametrize(("field", "value", "message"), [
    ("realised_pnl_usd", "3.5", "Must be a number."),
    ("realised_pnl_usd", True, "Must be a number."),
    ("observed_at", "9999-01-01T00:00:00Z", "Must not be in the future"),
])
def test_outcome_fields_are_strict(client, field, value, message):
    body = {"opportunity_id": "strict-1", "success": True, field: value}
    response = client.post("/outcomes", json=body)
    assert response.status_code == 422 and response.json["fields"][field][0].startswith(message)


def test_unreachable_database_keeps_predictions_and_refuses_outcomes():
    with PostgresServer() as server:
        ledger = SqlLedger(server.url)
        ledger.record([row("kept-1")])
        ledger.flush()
        server.kill()
        ledger.record([row("kept-2")])
        try:  # the writer thread may take the row first: then it fails there, and puts it back
            ledger.flush()
        except sa.exc.SQLAlchemyError:
            pass
        # Back in the queue, for when the database returns.
        wait_until(lambda: ledger.pending == 1, 10, what="the row back in the queue")
        with pytest.raises(LedgerUnavailable):
            ledger.add_outcomes([outcome("kept-1")])


def _ledger_rows(url: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(predictions).order_by(predictions.c.id)).all()
    finally:
        engine.dispose()


def _ledger_ids(url: str) -> list[str]:
    return [r.opportunity_id for r in _ledger_rows(url)]


def _wait_written(url: str, ids: list[str]) -> None:
    """Until every id's prediction is in the ledger (workers write theirs every FLUSH_S)."""
    wanted = set(ids)
    wait_until(lambda: wanted <= {r.opportunity_id for r in _ledger_rows(url)}, 10, what=f"{len(ids)} predictions "
               "written")


def _new_ids(n: int) -> list[str]:
    return [f"opp-{uuid.uuid4().hex[:12]}" for _ in range(n)]


def test_every_endpoint_records_what_it_judged_through_gunicorn(model_copy):
    shadow = str(model_copy)
    with Gunicorn({"AI_SHADOW_MODEL_PATH": shadow}) as server:
        single, rejected, batch_a, batch_b, v2_a, v2_b = _new_ids(6)
        history = [[*EXAMPLE[:5], 0.49, *EXAMPLE[6:]], [*EXAMPLE[:5], 0.495, *EXAMPLE[6:]]]
        body = server.post("/predict", {"features": EXAMPLE, "history": history, "opportunity_id": single})[1]
        server.post("/predict", {"features": [*EXAMPLE[:4], 0.01, *EXAMPLE[5:]], "opportunity_id": rejected})
        server.post("/predict", {"features": EXAMPLE})  # no id: nothing to keep
        server.post("/predict/batch", {"items": [{"features": EXAMPLE, "opportunity_id": batch_a},
                                                 {"features": [0, 0, 2, 0, 0, 0, 1, 0], "opportunity_id": batch_b},
                                                 {"features": EXAMPLE}]})
        server.post("/v2/models/lstm_omni/infer", {"inputs": [
            {"name": "features", "datatype": "FP32", "shape": [2, 8], "data": EXAMPLE * 2},
            {"name": "opportunity_id", "datatype": "BYTES", "shape": [2], "data": [v2_a, v2_b]}]})
        wait_until(lambda: len(_ledger_rows(server.ledger_url)) == 6, 5, what="six ledger rows")
        rows = {r.opportunity_id: r for r in _ledger_rows(server.ledger_url)}
    assert set(rows) == {single, rejected, batch_a, batch_b, v2_a, v2_b}
    first = rows[single]
    assert (first.endpoint, first.mode, first.model_type, first.steps) == ("predict", "SIMULATION", "onnx", 3)
    assert first.confidence == pytest.approx(body["confidence"], abs=1e-6) and first.decision == body["decision"]
    assert first.shadow_confidence == pytest.approx(first.confidence, abs=1e-6) and first.threshold == 0.78
    assert first.shadow_version == version_of(model_copy.read_bytes())  # which model gave shadow_confidence
    window = np.frombuffer(first.features, "<f4").reshape(3, 8)
    assert np.allclose(window, np.array([*history, EXAMPLE], np.float32))
    assert rows[rejected].decision is False
    assert rows[batch_b].implausible.split(",")[:2] == ["profit_usd", "profit_ratio"] and rows[batch_a].implausible is None
    assert {rows[v2_a].endpoint, rows[batch_a].endpoint} == {"v2", "batch"}


def test_outcomes_endpoint(tmp_path):
    key = "outcomes-key-0123456789"
    with Gunicorn({"AI_API_KEYS": key}, workers=1) as server:
        auth = {"Authorization": f"Bearer {key}"}
        known = _new_ids(4)
        for opportunity_id in known:
            server.post("/predict", {"features": EXAMPLE, "opportunity_id": opportunity_id}, headers=auth)
        assert server.post("/outcomes", {"opportunity_id": known[0], "success": True})[0] == 401
        observed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        status, body, _ = server.post("/outcomes", {"opportunity_id": known[0], "success": True,
                                                    "realised_pnl_usd": 3.1, "observed_at": observed},
                                      headers=auth)
        assert (status, body["result"]) == (201, "stored")
        assert server.post("/outcomes", {"opportunity_id": known[0], "success": True, "realised_pnl_usd": 3.1},
                           headers=auth)[:2] == (200, {"opportunity_id": known[0], "result": "duplicate",
                                                       "status": 200,
                                                       "message": "The same outcome was already stored."})
        status, body, _ = server.post("/outcomes", {"opportunity_id": known[0], "success": False}, headers=auth)
        assert status == 409 and body["error"] == "conflict" and body["opportunity_id"] == known[0]
        status, body, head = server.post("/outcomes", {"opportunity_id": "never-scored", "success": True},
                                         headers=auth)
        assert status == 404 and body["error"] == "unknown_opportunity" and head["Retry-After"] == "1"
        assert "retry" in body["message"]
        status, body, _ = server.post("/outcomes", [
            {"opportunity_id": known[1], "success": True}, {"opportunity_id": "ghost", "success": False},
            {"opportunity_id": known[2], "executed": False}], headers=auth)
        assert status == 200 and (body["stored"], body["unknown"], body["conflicts"]) == (2, ["ghost"], [])
        assert body["retry_after_s"] == 1
        status, body, _ = server.post("/outcomes", [{"opportunity_id": known[1], "success": False},
                                                    {"opportunity_id": known[2], "executed": False}], headers=auth)
        assert status == 409 and body["conflicts"] == [known[1]] and body["duplicates"] == 1
        status, body, _ = server.post("/outcomes", [{"opportunity_id": "a"}], headers=auth)
        assert status == 422 and list(body["fields"]) == ["0.success"]
        # Observed before its prediction was scored: 422 naming observed_at; the rest of a batch is processed.
        year_one = {"opportunity_id": known[3], "success": True, "observed_at": "0001-01-01T00:00:00Z"}
        status, body, _ = server.post("/outcomes", year_one, headers=auth)
        assert status == 422 and body["error"] == "validation_error" and list(body["fields"]) == ["observed_at"]
        status, body, _ = server.post("/outcomes", [year_one, {"opportunity_id": known[0], "success": True,
                                                                "realised_pnl_usd": 3.1}], headers=auth)
        assert status == 422 and body["invalid"] == [known[3]] and body["duplicates"] == 1
        status, body, _ = server.post("/outcomes", [{"opportunity_id": "a", "success": True}] * 4097, headers=auth)
        assert status == 413


def test_no_acknowledged_outcome_lost_when_a_worker_is_killed():
    with Gunicorn() as server:
        ids = _new_ids(400)
        for start in range(0, len(ids), 100):
            server.post("/predict/batch", {"items": [{"features": EXAMPLE, "opportunity_id": i}
                                                     for i in ids[start:start + 100]]})
        _wait_written(server.ledger_url, ids)
        acknowledged, failed = [], []
        stop = threading.Event()

        def stream(part: list[str]) -> None:
            for opportunity_id in part:
                if stop.is_set():
                    return
                try:
                    status, _, _ = server.post("/outcomes", {"opportunity_id": opportunity_id, "success": True},
                                               timeout=10)
                except (OSError, http.client.HTTPException):
                    status = 0
                (acknowledged if status in (200, 201) else failed).append(opportunity_id)

        threads = [threading.Thread(target=stream, args=(ids[k::4],)) for k in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) > 60, 30, what="outcomes flowing")
        os.kill(min(server.worker_pids()), signal.SIGKILL)
        for thread in threads:
            thread.join(60)
        stored = set()
        engine = sa.create_engine(server.ledger_url)
        with engine.connect() as connection:
            stored = set(connection.execute(sa.select(outcomes.c.opportunity_id)).scalars())
        engine.dispose()
    assert set(acknowledged) <= stored
    assert len(acknowledged) + len(failed) == len(ids) and len(failed) <= 4


def test_two_instances_behind_nginx_share_one_postgres_ledger(postgres, tmp_path):
    engine = sa.create_engine(postgres.url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS predictions, outcomes"))
    env = {"AI_LEDGER_URL": postgres.url}
    with Gunicorn(env, workers=1) as first, Gunicorn(env, workers=1) as second, \
            Nginx(tmp_path, [first.port, second.port]) as proxy:
        context = proxy.ssl_context()
        ids = _new_ids(40)
        for opportunity_id in ids:  # both instances predict (nginx alternates)
            status, _, _ = _https(proxy, "/predict", {"features": EXAMPLE, "opportunity_id": opportunity_id}, context)
            assert status == 200
        _wait_written(postgres.url, ids)
        for opportunity_id in ids:
            status, body, _ = _https(proxy, "/outcomes", {"opportunity_id": opportunity_id, "success": True}, context)
            assert status == 201, body
        reported_at = time.time()
        with engine.connect() as connection:
            predicted = connection.execute(sa.select(predictions.c.opportunity_id)).scalars().all()
            reported = connection.execute(sa.select(outcomes.c.opportunity_id)).scalars().all()
        # Each instance's reporter computes from the shared ledger; nginx asks both in turn.
        quality = [wait_until(lambda: (answer := _https(proxy, "/quality?window=1h", None, context)[1])
                              .get("computed_at", 0) > reported_at and answer, 30, what="a fresh report")
                   for _ in range(2)]
    engine.dispose()
    assert sorted(predicted) == sorted(ids) and sorted(reported) == sorted(ids)
    assert all(q["models"]["champion"]["labelled"] == 40 for q in quality)


def _https(proxy: Nginx, path: str, body, context):
    from tests.servers import http

    return http("GET" if body is None else "POST", proxy.https + path, body, context=context)


def test_quality_gauges_on_the_metrics_port_carry_the_version():
    import re
    import urllib.request

    def gauges() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in text.splitlines()
                                                       if line.startswith("ai_quality"))}

    with Gunicorn(workers=1) as server:
        ids = _new_ids(20)
        for k, opportunity_id in enumerate(ids):
            server.post("/predict", {"features": [*EXAMPLE[:4], k / 20, *EXAMPLE[5:]], "opportunity_id": opportunity_id})
        assert server.post("/outcomes", [{"opportunity_id": i, "success": k % 2 == 0}
                                         for k, i in enumerate(ids)])[1]["stored"] == 20
        version = server.get("/status")[1]["model_version"]
        labelled = f'ai_quality_labelled{{model="champion",version="{version}",window="1h"}}'
        lines = wait_until(lambda: (found := gauges()).get(labelled) == 20 and found, 30, what="the gauges")
    assert lines["ai_quality_up"] == 1.0 and 0 <= lines["ai_quality_report_age_seconds"] < 60
    assert 0.0 <= lines[f'ai_quality_auc{{model="champion",version="{version}",window="24h"}}'] <= 1.0
    assert all(re.search(r'version="[0-9a-f]{12}"', name) for name in lines if "{" in name)


def test_an_id_postgresql_cannot_store_is_refused_and_the_ledger_goes_on(postgres):
    """NUL in an id used to wedge a worker's PostgreSQL writer for good; it is now refused at the boundary."""
    with Gunicorn({"AI_LEDGER_URL": postgres.url}, workers=1) as server:
        status, body, _ = server.post("/predict", {"features": EXAMPLE, "opportunity_id": "poison\x00id"})
        assert status == 422 and list(body["fields"]) == ["opportunity_id"]
        assert server.post("/outcomes", {"opportunity_id": "poison\x00id", "success": True})[0] == 422
        fine = _new_ids(1)[0]
        assert server.post("/predict", {"features": EXAMPLE, "opportunity_id": fine})[0] == 200
        status, body, _ = wait_until(lambda: (answer := server.post("/outcomes", {
            "opportunity_id": fine, "success": True}))[0] != 404 and answer, 10, what="the outcome accepted")
        assert status == 201
