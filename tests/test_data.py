"""The training data format: the example file passes, and bad data gets errors naming row and column (exit 2)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omni_mev.training.data import DataError, load
from tests.servers import ROOT

EXAMPLE_DATA = ROOT / "examples" / "data" / "outcomes.csv"


def _rows(path: Path = EXAMPLE_DATA, n: int = 60) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))[:n]


def _write(path: Path, rows: list[dict[str, str]], drop: str | None = None) -> Path:
    names = [name for name in rows[0] if name != drop]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _check(source: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omni_mev.cli", "data", "check", source], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_example_file_passes_and_is_described():
    result = _check(str(EXAMPLE_DATA))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 4000 and report["duplicate_ids"] == 0 and report["ignored_columns"] == []
    assert 0.3 < report["success_rate"] < 0.7 and report["labels"]["success"] + report["labels"]["failure"] == 4000
    assert report["with_history"] == 3999 and report["realised_pnl_reported"] == 4000
    assert report["time_span"]["days"] > 0 and set(report["feature_ranges"]) >= {"profit_usd", "dex_count"}


@pytest.mark.parametrize(("change", "expected"), [
    (lambda rows: rows[4].update(profit_usd="nan"), "row 5, column profit_usd: 'nan' is not a number"),
    (lambda rows: rows[6].update(gas_millions=""), "row 7, column gas_millions: missing"),
    (lambda rows: rows[6].update(gas_millions="0,35"),
     "row 7, column gas_millions: '0,35' is not a number: decimal commas are not read"),
    (lambda rows: rows[2].update(dex_count="7"), "row 3, column dex_count: 7.0 is outside 1..4"),
    (lambda rows: rows[2].update(route_complexity="2.5"), "row 3, column route_complexity: 2.5 is not an integer"),
    (lambda rows: rows[8].update(time_of_day="1e39"), "row 9, column time_of_day"),
    (lambda rows: rows[9].update(opportunity_id=rows[3]["opportunity_id"]),
     "row 10, column opportunity_id: 'sim-3' already at row 4"),
    (lambda rows: rows[12].update(observed_at="2023-01-01T00:00:00+00:00"),
     "row 13, column observed_at: time goes backwards in stream 'simulated'"),
    (lambda rows: rows[5].update(observed_at="yesterday"), "row 6, column observed_at: 'yesterday' is not an RFC 3339"),
    (lambda rows: rows[5].update(observed_at="2023-11-15T00:00:00"),
     "row 6, column observed_at: '2023-11-15T00:00:00' has no UTC offset, so its moment is unknown; add one"),
    (lambda rows: rows[7].update(success="maybe"), "row 8, column success: 'maybe' is not true/false"),
    (lambda rows: rows[7].update(realised_pnl_usd="lots"), "row 8, column realised_pnl_usd: 'lots' is not a number"),
    (lambda rows: [row.update(success="true") for row in rows], "column success: every row is True"),
])
def test_bad_data_names_row_and_column(tmp_path, change, expected):
    rows = _rows()
    change(rows)
    path = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as raised:
        load(str(path))
    assert any(expected in problem for problem in raised.value.problems), raised.value.problems
    result = _check(str(path))
    assert result.returncode == 2 and expected in result.stderr


def test_missing_columns_listed(tmp_path):
    path = _write(tmp_path / "bad.csv", _rows(), drop="success")
    result = _check(str(path))
    assert result.returncode == 2 and "column success: missing" in result.stderr


def test_every_problem_reported_at_once(tmp_path):
    rows = _rows()
    rows[1].update(profit_usd="-5")
    rows[3].update(success="")
    problems = pytest.raises(DataError, load, str(_write(tmp_path / "bad.csv", rows))).value.problems
    assert [p.split(":")[0] for p in problems] == ["row 2, column profit_usd", "row 4, column success"]


def test_without_stream_rows_are_single_vectors_and_extra_columns_ignored(tmp_path):
    rows = _rows(n=200)
    for row in rows:
        row["note"] = "x"
    dataset = load(str(_write(tmp_path / "plain.csv", rows, drop="stream")))
    assert dataset.history_length.max() == 0 and dataset.ignored_columns == ["note"]


def test_parquet_reads_the_same_as_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(n=300)
    table = pa.table({name: [row[name] for row in rows] for name in rows[0]})
    pq.write_table(table, tmp_path / "outcomes.parquet")
    from_parquet = load(str(tmp_path / "outcomes.parquet"))
    from_csv = load(str(_write(tmp_path / "same.csv", rows)))
    assert np.array_equal(from_parquet.vectors, from_csv.vectors) and np.array_equal(from_parquet.label,
                                                                                     from_csv.label)
    assert np.array_equal(from_parquet.windows(np.arange(40, 50), 8), from_csv.windows(np.arange(40, 50), 8))


def test_history_windows_follow_each_stream(tmp_path):
    rows = _rows(n=40)
    for i, row in enumerate(rows):
        row["stream"] = "a" if i % 2 == 0 else "b"
    dataset = load(str(_write(tmp_path / "two.csv", rows)))
    window = dataset.windows(np.array([10]), 3)[0]  # row 11 (stream a): rows 7, 9, 11
    expected = np.array([[float(rows[k][name]) for name in list(rows[0])[:8]] for k in (6, 8, 10)], np.float32)
    assert np.array_equal(window, expected) and dataset.history_length[10] == 5


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_encodings_are_named_by_line_never_a_traceback(tmp_path):
    good = _write(tmp_path / "good.csv", _rows())
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes(good.read_text().encode("utf-16"))
    result = _check(str(utf16))
    _no_traceback(result)
    assert "line 1: the file is UTF-16" in result.stderr
    latin1 = tmp_path / "latin1.csv"
    lines = good.read_bytes().splitlines(keepends=True)
    lines[5] = lines[5].replace(b"sim-4", b"sim-4\xe9")  # one Latin-1 byte in the 6th line
    latin1.write_bytes(b"".join(lines))
    result = _check(str(latin1))
    _no_traceback(result)
    assert "line 6: byte 0xe9" in result.stderr and "is not UTF-8" in result.stderr
    # train refuses it the same way, and leaves no output folder behind
    output = tmp_path / "never-made"
    result = subprocess.run([sys.executable, "-m", "omni_mev.cli", "train", "--data", str(latin1), "--output",
                             str(output)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    _no_traceback(result)
    assert "line 6: byte 0xe9" in result.stderr and not output.exists()


def test_a_byte_order_mark_and_other_delimiters_are_accepted(tmp_path):
    rows = _rows(n=80)
    plain = load(str(_write(tmp_path / "plain.csv", rows)))
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "plain.csv").read_bytes())
    for delimiter, name in ((";", "semicolons.csv"), ("\t", "tabs.tsv")):
        with open(tmp_path / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    for path in (with_bom, tmp_path / "semicolons.csv", tmp_path / "tabs.tsv"):
        other = load(str(path))
        assert np.array_equal(other.vectors, plain.vectors) and np.array_equal(other.label, plain.label), path


def test_a_missing_column_with_another_delimiter_in_the_header_gets_a_hint(tmp_path):
    rows = [{("success;stream" if name == "success" else name): value for name, value in row.items()}
            for row in _rows(n=20)]
    result = _check(str(_write(tmp_path / "odd.csv", rows)))
    _no_traceback(result)
    assert "column success: missing" in result.stderr and "hint: the header is split by commas but also holds " \
                                                            "semicolons" in result.stderr


def test_repeated_problems_are_reported_once_with_their_count(tmp_path):
    rows = _rows(n=60)
    for k in range(3, 60, 2):
        rows[k].update(success="maybe")
    result = _check(str(_write(tmp_path / "many.csv", rows)))
    _no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if "is not true/false" in line]
    assert len(lines) == 1 and "29 in all; rows 4, 6, 8, 10, 12, ..." in lines[0]


def test_short_rows_and_infinite_values_are_named_as_such(tmp_path):
    path = _write(tmp_path / "bad.csv", _rows(n=30))
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = ",".join(lines[5].split(",")[:9]) + "\n"  # data row 5: 9 of 13 fields
    fields = lines[8].split(",")
    fields[5] = "1e400"  # time_of_day of data row 8
    lines[8] = ",".join(fields)
    path.write_text("".join(lines))
    result = _check(str(path))
    _no_traceback(result)
    assert "row 5: short row: 9 of the header's" in result.stderr and "None" not in result.stderr
    assert "row 8, column time_of_day: '1e400' is out of range: not a finite number" in result.stderr


def test_the_same_problem_in_many_rows_is_one_line():
    from omni_mev.training.data import summarise

    assert summarise(["row 5: short row: 9 of the header's 13 fields", "row 9: short row: 8 of the header's 13 fields",
                      "row 7, column success: 'maybe' is not true/false", "row 8, column dex_count: 7.0 is outside 1..4",
                      "column success: missing (required: success)"]) == [
        "row 5: short row: 9 of the header's 13 fields (and 1 more row like it: 2 in all; rows 5, 9)",
        "row 7, column success: 'maybe' is not true/false", "row 8, column dex_count: 7.0 is outside 1..4",
        "column success: missing (required: success)"]


def test_a_file_read_in_chunks_is_the_file_read_whole(tmp_path, monkeypatch):
    """Streamed reading keeps what crosses a chunk's edge: stream links, repeated ids, time order."""
    from omni_mev.training import data

    rows = _rows(n=200)
    for i, row in enumerate(rows):
        row["stream"] = "a" if i % 3 else "b"
    path = _write(tmp_path / "streams.csv", rows)
    whole = load(str(path))
    monkeypatch.setattr(data, "CHUNK_ROWS", 7)
    chunked = load(str(path))
    for name in ("vectors", "prev", "current", "label", "observed_at", "pnl"):
        assert np.array_equal(getattr(whole, name), getattr(chunked, name), equal_nan=name == "pnl"), name
    assert list(whole.opportunity_id) == list(chunked.opportunity_id)
    assert np.array_equal(whole.windows(np.arange(150, 160), 12), chunked.windows(np.arange(150, 160), 12))

    rows[150]["opportunity_id"] = rows[2]["opportunity_id"]  # repeated across chunks
    rows[160]["observed_at"] = rows[100]["observed_at"]  # back in time in stream a, across chunks
    problems = pytest.raises(DataError, load, str(_write(tmp_path / "bad.csv", rows))).value.problems
    assert f"row 151, column opportunity_id: {rows[2]['opportunity_id']!r} already at row 3" in problems
    assert any(p.startswith("row 161, column observed_at: time goes backwards in stream 'a'") for p in problems)


def test_reading_stops_after_enough_problems(tmp_path, monkeypatch):
    from omni_mev.training import data

    rows = _rows(n=100)
    for row in rows:
        row["success"] = "maybe"
    monkeypatch.setattr(data, "CHUNK_ROWS", 10)
    monkeypatch.setattr(data, "MAX_PROBLEMS", 25)
    problems = pytest.raises(DataError, load, str(_write(tmp_path / "bad.csv", rows))).value.problems
    assert len(problems) == 31 and problems[-1] == "(reading stopped after row 30: 25 problems or more)"


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omni_mev.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _mangled(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A copy of the example's first rows damaged as users' files were; the message it must get."""
    text = "".join(EXAMPLE_DATA.read_text().splitlines(keepends=True)[:200])
    header, _, body = text.partition("\n")
    path = tmp_path / f"{case.replace(' ', '-')}.csv"
    if case == "cr line endings":
        path.write_bytes(text.replace("\n", "\r").encode())
        return path, ""  # read as it is
    if case == "repeated column":
        path.write_text(header.replace("stream", "success") + "\n" + body)
        return path, "the column 'success' appears 2 times"
    if case == "unterminated quote":
        lines = body.splitlines(keepends=True)
        path.write_text(header + "\n" + "".join(lines[:5]) + '"' + "".join(lines[5:]) * 40)
        return path, 'a quote (") opened and never closed'
    if case == "gzip":
        path = path.with_suffix(".csv.gz")
        path.write_bytes(__import__("gzip").compress(text.encode()))
        return path, ""  # read as it is
    if case == "zip":
        import zipfile

        path = path.with_suffix(".zip")
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("outcomes.csv", text)
        return path, "the file is a ZIP archive; unzip it"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["cr line endings", "repeated column", "unterminated quote", "gzip", "zip"])
def test_files_that_crashed_the_reader_are_read_or_named(tmp_path, case):
    """Each of these gave a traceback and exit 1 from `data check`, `train` and `evaluate`: now each is read, or
    refused with one message naming the line and the fix, exit 2."""
    path, message = _mangled(tmp_path, case)
    results = [_cli("data", "check", str(path)),
               _cli("evaluate", "--data", str(path), "--model", str(ROOT / "models" / "lstm_omni.onnx"), "--all")]
    if message:  # train reads through data check's loader: refused there, it must refuse the same way
        results.append(_cli("train", "--data", str(path), "--output", str(tmp_path / "model"), "--max-epochs", "1",
                            "--batches-per-epoch", "2"))
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr
        if message:
            assert result.returncode == 2 and message in result.stderr, result.stderr
        else:
            assert result.returncode in (0, 1), result.stderr  # read: the report (evaluate: 1 below its bar)
    if not message:
        assert json.loads(results[0].stdout)["rows"] == 199


def test_a_time_without_offset_is_one_problem_not_two(tmp_path):
    rows = _rows()
    rows[20]["observed_at"] = rows[20]["observed_at"].split("+")[0].removesuffix("Z")
    with pytest.raises(DataError) as raised:
        load(str(_write(tmp_path / "naive.csv", rows)))
    assert len(raised.value.problems) == 1 and "has no UTC offset" in raised.value.problems[0]


def test_naive_parquet_timestamps_are_one_kind_of_problem_in_iso_form(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(n=40)
    table = {name: [row[name] for row in rows] for name in rows[0]}
    for name in ("profit_usd", "profit_ratio", "route_complexity", "gas_millions", "confidence_score", "time_of_day",
                 "dex_count", "input_amount_thousands", "realised_pnl_usd"):
        table[name] = [float(v) for v in table[name]]
    from datetime import datetime

    table["observed_at"] = [datetime(2026, 1, 1, 0, 0, i % 60, 500 * i) for i in range(40)]  # no time zone
    pq.write_table(pa.table(table), tmp_path / "naive.parquet")
    with pytest.raises(DataError) as raised:
        load(str(tmp_path / "naive.parquet"))
    lines = str(raised.value).splitlines()[1:]
    assert len(lines) == 1 and "'2026-01-01T00:00:00' has no time zone" in lines[0] and "datetime.datetime" not in lines[0]
    assert "40 in all" in lines[0]


def _fuzz_header() -> str:
    return EXAMPLE_DATA.read_text().partition("\n")[0]


from hypothesis import HealthCheck, given, settings  # noqa: E402 - beside the fuzz it serves
from hypothesis import strategies as st  # noqa: E402

_FIELDS = st.one_of(st.text(max_size=12), st.sampled_from(["", "0", "1.5", "0,35", "nan", "inf", "true", "yes", '"',
                                                          '""', "2026-01-01T00:00:00Z", "2026-01-01T00:00:00",
                                                          "-1e309", "\x00", "\r", "\n", "é"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_FIELDS, min_size=0, max_size=16), max_size=6),
       delimiter=st.sampled_from([",", ";", "\t", "|"]), ending=st.sampled_from(["\n", "\r\n", "\r"]),
       header=st.booleans(), raw=st.binary(max_size=64))
def test_no_input_gives_the_reader_a_traceback(tmp_path, rows, delimiter, ending, header, raw):
    """Anything a file may hold: read, or refused with a DataError; nothing else escapes."""
    lines = ([_fuzz_header().replace(",", delimiter)] if header else []) + [delimiter.join(row) for row in rows]
    path = tmp_path / "fuzz.csv"
    path.write_bytes(ending.join(lines).encode("utf-8", "surrogatepass") + raw)
    try:
        load(str(path))
    except DataError:
        pass
