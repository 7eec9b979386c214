"""Peak memory and time of `omni-mev data check` on a large CSV file.

    python -m bench.data_files     # ~1 minute: bench/results/data-files-<date>.json

Writes a file of simulated outcomes (about 100 MB: 820,000 rows with a stream
and realised PnL), then runs `omni-mev data check` on it in a child process
and reads the child's peak resident set size from the kernel (getrusage).
"""
from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import ROOT, machine, write_results


def peak_rss_mb(command: list[str]) -> tuple[float, float, int]:
    """Run `command` in a fresh interpreter that reports its own child's peak RSS: (MB, seconds, exit code)."""
    probe = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
             "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - start, code)")
    output = subprocess.run([sys.executable, "-c", probe, *command], cwd=ROOT, capture_output=True, text=True,
                            check=True, timeout=1800).stdout.split()
    return float(output[0]), float(output[1]), int(output[2])


def run(rows: int) -> dict[str, Any]:
    from omni_mev.training.data import from_simulation, write_csv
    from omni_mev.training.simulate import simulate

    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "machine": machine(), "rows": rows}
    with tempfile.TemporaryDirectory(prefix="omni-mev-data-") as scratch:
        path = Path(scratch) / "outcomes.csv"
        started = time.perf_counter()
        write_csv(from_simulation(simulate(rows, seed=5)), path)
        results["file_mb"] = round(path.stat().st_size / 1e6, 1)
        results["written_in_s"] = round(time.perf_counter() - started, 1)
        baseline = peak_rss_mb([sys.executable, "-c", "import omni_mev.cli"])
        results["interpreter_and_imports_peak_rss_mb"] = round(baseline[0], 1)
        rss, seconds, code = peak_rss_mb([sys.executable, "-m", "omni_mev.cli", "data", "check", str(path)])
        results["data_check"] = {"peak_rss_mb": round(rss, 1), "seconds": round(seconds, 2), "exit_code": code}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small file, to check the harness")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    results = run(5_000 if args.smoke else 820_000)
    path = write_results(results, args.results, "data-files", args.smoke)
    check = results["data_check"]
    print(f"data check on {results['file_mb']} MB ({results['rows']:,} rows): peak RSS {check['peak_rss_mb']} MB "
          f"(goal < 300), {check['seconds']} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
