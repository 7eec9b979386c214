"""The benchmark harness, in its smoke mode: a few seconds, so `make bench` keeps working."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")
def test_smoke_run_writes_results_and_report(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--results", str(tmp_path),
                             "--docs", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = tmp_path.glob("*-smoke.json")
    results = json.loads(path.read_text())
    assert results["smoke"] is True and results["machine"]["cores"] >= 1
    for target in ("omni-mev", "reference"):
        (run,) = results["single"][target]
        assert run["requests"] > 0 and run["non_2xx"] == 0 and run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert results["ready_s"][target] > 0 and all(rss > 0 for rss in results["rss_mb"][target])
    # One size per endpoint in a smoke run: every encoder runs.
    assert [(b["endpoint"], b["batch_size"]) for b in results["batch"]] == [
        ("/predict/batch", 1024), ("V2 infer", 4096), ("V2 infer, binary", 4096)]
    assert all(b["non_2xx"] == 0 and b["predictions_per_s"] == b["requests_per_s"] * b["batch_size"]
               for b in results["batch"])
    assert set(results["variants"]) == {"no redis", "redis, cache off", "redis, cache on (all hits)",
                                        "pytorch fallback"}
    assert all(v["non_2xx"] == 0 for v in results["variants"].values())
    # The fallback really ran PyTorch: its workers carry torch.
    assert min(results["variants"]["pytorch fallback"]["rss_mb"]) > max(results["variants"]["no redis"]["rss_mb"])
    ensemble = results["ensemble"]
    # Each side served its own model: the ensemble's version, and the shipped LSTM's.
    assert ensemble["model_versions"]["ensemble"] == ensemble["ensemble_version"] != ensemble["model_versions"]["lstm"]
    assert all(r["non_2xx"] == 0 and r["requests"] > 0 for runs in ensemble["runs"].values() for r in runs)
    assert all(us > 0 for us in ensemble["prediction_us"].values())
    dispatch = results["dispatch"]
    for batch in dispatch["batch"]:  # every order of every run ended in one logged outcome
        assert all(r["status"] == 200 and sum(r["outcomes"].values()) == batch["items"] for r in batch["runs"])
    assert all(row["non_2xx"] == 0 and row["dispatches"] > 0 for row in dispatch["predict_p99"].values())
    streams = results["streams"]
    assert set(streams["summary"]) == {"1", "8"}
    assert all(run["messages"] > 0 and run["errors"] == 0 and run["p50_ms"] <= run["p99_ms"]
               for runs in streams["runs"].values() for run in runs)
    assert streams["idle"]["connections"] == 50 and streams["idle"]["rss_after_mb"] > 0
    assert len(streams["runs"]["ws2@8"]) == len(streams["runs"]["ws@8"]) and "ws2@1" not in streams["runs"]
    assert streams["summary"]["8"]["ws_2_processes_ratio"] > 0
    report = (tmp_path / "benchmarks.md").read_text()
    assert "Persistent connections: WebSocket and gRPC streams against HTTP keep-alive" in report
    assert "| V2 infer, binary | 4096 |" in report and "Two stream processes sharing the port" in report
    assert "p99 with the slow engine / with the fast one" in report
    assert "Serving the ensemble, `/predict` runs at" in report
    assert "| 8 | omni-mev |" in report and "| V2 infer | 4096 |" in report
    assert (tmp_path / "benchmarks.png").stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make test installs it)")
def test_ledger_load_smoke_run(tmp_path):
    results = smoke_results("ledger_load", "ledger", tmp_path)
    assert all(run["median_ratio"] > 0 for run in results["ledger_cost"])
    mixed = results["mixed"]
    assert all(r["non_2xx"] == 0 and r["requests"] > 0 for runs in mixed["runs"].values() for r in runs)
    # Half the outcomes were for unknown ids: answered 404 (at once), the others stored; no other answer.
    assert set(mixed["outcomes"]) == {"201", "404"} and mixed["quality"] and set(mixed["quality"]) == {"200"}
    (quality,) = results["quality"]
    assert quality["statuses"] == {"200": quality["latency"]["count"]} and quality["latency"]["count"] >= 200
    assert results["ledger_size"]["steps_1"]["mb_per_million"] > 0
    assert len(results["insert_cost"]) == 4 and all(v["cpu_us_per_row"] > 0 for v in results["insert_cost"].values())


def smoke_results(module: str, name: str, folder: Path) -> dict:
    """Run `python -m bench.<module> --smoke` and read the results it wrote."""
    result = subprocess.run([sys.executable, "-m", f"bench.{module}", "--smoke", "--results", str(folder)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = folder.glob(f"{name}-*-smoke.json")
    return json.loads(path.read_text())


def test_false_refusals_smoke_run(tmp_path):
    results = smoke_results("false_refusals", "false-refusals", tmp_path)
    for case in ("small_data", "shipped_model"):
        assert len(results[case]) == 3
        for run in results[case].values():
            assert run["now"]["opportunities"] == run["before"]["opportunities"] > 0
            # The rules now refuse nothing the rules before passed (the margin only widens, history only narrows).
            assert run["now"]["flagged"] <= run["before"]["flagged"]


def test_data_files_smoke_run(tmp_path):
    results = smoke_results("data_files", "data-files", tmp_path)
    assert results["data_check"]["exit_code"] == 0 and results["data_check"]["peak_rss_mb"] > 0


def test_money_path_smoke_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.money_path", "--smoke", "--results", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = tmp_path.glob("money-path-*-smoke.json")
    results = json.loads(path.read_text())
    (history,) = results["history"]
    assert history["past_dispatches"] == 1000 and history["first_order_status"] == "dispatched"
    assert history["orders_during_reload"] >= 10 and history["orders_not_dispatched"] == 0
    assert set(results["reload_under_load"]) == {"steady", "with a reload"}
    assert all(run["requests"] > 0 and run["non_2xx"] == 0 for run in results["reload_under_load"].values())
    assert set(results["claim_per_dispatch"]) == {"host (SQLite)", "redis (SQLite + Redis SET NX)",
                                                  "database (PostgreSQL, fsync on)"}
    assert all(0 < cost["median_us"] <= cost["p99_us"] for cost in results["claim_per_dispatch"].values())


@pytest.mark.unit
def test_readme_performance_figures_are_those_of_the_newest_full_run():
    from bench.report import README_END, README_START, newest_results, readme_performance

    newest = newest_results(ROOT / "bench" / "results")
    readme = (ROOT / "README.md").read_text()
    quoted = readme.partition(README_START)[2].partition(README_END)[0].strip()
    expected = readme_performance(json.loads(newest.read_text()), f"bench/results/{newest.name}")
    assert quoted == expected, "README's Performance figures differ from the newest run: python -m bench.report"


@pytest.mark.unit
def test_a_full_run_rewrites_only_the_readme_block(tmp_path):
    from bench.report import README_END, README_START, newest_results, write_readme_performance

    results = json.loads(newest_results(ROOT / "bench" / "results").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold figures\n{README_END}\nafter\n")
    results["ratio"]["8"]["median_throughput"] = 2.5
    write_readme_performance(results, readme, "bench/results/x.json")
    text = readme.read_text()
    assert text.startswith(f"before\n{README_START}\n") and text.endswith(f"\n{README_END}\nafter\n")
    assert "at 2.50x the requests/s" in text and "old figures" not in text
