"""Training data: a documented format for a user's own outcomes, read from CSV, Parquet or the ledger, and checked.

A file has one row per opportunity:

| column | required | |
|---|---|---|
| the 8 feature names (profit_usd, ...) | yes | the values the service was sent, within the API's bounds |
| opportunity_id | yes | unique |
| observed_at | yes | RFC 3339 with an offset; rows of one stream in time order |
| success | yes | true/false (or 1/0, or yes/no; any case): the trade landed and made a profit after gas |
| stream | no | what a history window groups by (a pool pair, a scanner); without it rows are single vectors |
| realised_pnl_usd | no | profit or loss after gas; enables a PnL-based threshold |

Other columns are ignored (and listed). A CSV file is UTF-8 (a byte-order
mark is accepted); its delimiter (comma, semicolon, tab or bar) is found from
its header. Files are read CHUNK_ROWS rows at a time, each row kept as numbers
(memory follows the row count, not the file's size). The outcome ledger is a
source too, given as its SQLAlchemy URL:
every prediction with an executed outcome, with the input window the model
read.
"""
from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import math
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from omni_mev.features import FEATURE_BOUNDS, FEATURE_NAMES, MAX_HISTORY, N_FEATURES

REQUIRED = (*FEATURE_NAMES, "opportunity_id", "observed_at", "success")
OPTIONAL = ("stream", "realised_pnl_usd")
MAX_REPORTED_PROBLEMS = 25
# Files are read this many rows at a time; reading stops once this many problems are found (each is a line of
# text kept for the report, and a file that wrong needs fixing before its other problems matter).
CHUNK_ROWS = 20_000
MAX_PROBLEMS = 100_000
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


DELIMITERS = (",", ";", "\t", "|")
# What makes two problems "the same" when they are counted together: their column, and their message with the
# quoted values and numbers taken out.
_ROW = re.compile(r"row (\d+)")
_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|-?\d[\d.,e+-]*")


class DataError(Exception):
    """The data cannot be trained on; each problem names its row (1 = the first data row) and column.

    The same problem in many rows is reported once, with its first rows and its count.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        summary = summarise(problems)
        shown = summary[:MAX_REPORTED_PROBLEMS]
        more = len(summary) - len(shown)
        super().__init__(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(shown)
                         + (f"\n  ... and {more} more kinds" if more else ""))
        self.problems = problems


def summarise(problems: list[str]) -> list[str]:
    """Each kind of problem once, in the order first met: alone as it is, or with its count and first rows."""
    kinds: dict[str, list[str]] = {}
    for problem in problems:
        where, _, message = problem.partition(": ")
        column = where.rpartition("column ")[2] if "column " in where else ""  # "row N: short row..." group too
        kinds.setdefault(f"{column}: {_VALUES.sub('...', message)}", []).append(problem)
    lines = []
    for same in kinds.values():
        if len(same) == 1:
            lines.append(same[0])
        else:
            rows = ", ".join(found.group(1) for p in same[:5] if (found := _ROW.match(p)))
            others = len(same) - 1
            lines.append(f"{same[0]} (and {others:,} more row{'s' if others > 1 else ''} like it: {len(same):,} in "
                         f"all; rows {rows}"
                         + (", ..." if len(same) > 5 else "") + ")")
    return lines


@dataclass
class Dataset:
    """Labelled opportunities and the windows the model reads for them.

    `vectors` holds every feature vector, history steps included, each linked
    to the one before it in its stream or window (`prev`, -1 at the start).
    Example i is vectors[current[i]], after the vectors its links lead to.
    """

    source: str
    vectors: np.ndarray  # [m, 8] float32
    prev: np.ndarray  # [m] int64
    current: np.ndarray  # [n] int64
    label: np.ndarray  # [n] int8
    observed_at: np.ndarray  # [n] float64, epoch seconds
    opportunity_id: np.ndarray  # [n] object
    pnl: np.ndarray  # [n] float64, NaN where not reported
    oracle: np.ndarray | None = None  # the true probability, for simulated data
    ignored_columns: list[str] = field(default_factory=list)
    unique_ids: bool = False  # checked when read (a file's ids must be); otherwise describe() counts repeats

    def __len__(self) -> int:
        return len(self.current)

    def __post_init__(self) -> None:
        # Earlier steps each vector has (links point backwards, so one pass in order).
        depth = np.zeros(len(self.vectors), np.int64)
        for v in np.flatnonzero(self.prev >= 0):
            depth[v] = min(depth[self.prev[v]] + 1, MAX_HISTORY)
        self._depth = depth

    @property
    def history_length(self) -> np.ndarray:
        """How many earlier opportunities each example has (0 to 31)."""
        return self._depth[self.current]

    @property
    def has_pnl(self) -> bool:
        return bool(np.isfinite(self.pnl).any())

    def subset(self, index: np.ndarray) -> Dataset:
        """Examples `index` (vectors shared)."""
        return replace(self, current=self.current[index], label=self.label[index],
                       observed_at=self.observed_at[index], opportunity_id=self.opportunity_id[index],
                       pnl=self.pnl[index], oracle=None if self.oracle is None else self.oracle[index])

    def windows(self, index: np.ndarray, length: int) -> np.ndarray:
        """Raw windows [len(index), length, 8] for examples with at least length - 1 earlier ones."""
        steps = [self.current[index]]
        for _ in range(length - 1):
            steps.append(self.prev[steps[-1]])
        return self.vectors[np.stack(steps[::-1], axis=1)]

    def scored_windows(self, length_cap: int = MAX_HISTORY + 1) -> list[tuple[np.ndarray, np.ndarray]]:
        """(example indices, windows) grouped by window length: each example with all its history (up to the cap)."""
        lengths = np.minimum(self.history_length, length_cap - 1) + 1
        return [(index, self.windows(index, int(length)))
                for length in np.unique(lengths) for index in [np.flatnonzero(lengths == length)]]

    def describe(self) -> dict[str, Any]:
        """What `omni-mev data check` reports."""
        current = self.vectors[self.current]
        span = (float(self.observed_at.min()), float(self.observed_at.max())) if len(self) else (0.0, 0.0)
        return {
            "source": self.source,
            "rows": len(self),
            "time_span": {"from": _iso(span[0]), "to": _iso(span[1]), "days": round((span[1] - span[0]) / 86_400, 3)},
            "success_rate": round(float(self.label.mean()), 4) if len(self) else None,
            "labels": {"success": int(self.label.sum()), "failure": int(len(self) - self.label.sum())},
            "with_history": int((self.history_length > 0).sum()),
            "realised_pnl_reported": int(np.isfinite(self.pnl).sum()),
            "feature_ranges": {name: [float(current[:, i].min()), float(current[:, i].max())]
                               for i, name in enumerate(FEATURE_NAMES)} if len(self) else {},
            "duplicate_ids": 0 if self.unique_ids else len(self) - len(set(self.opportunity_id)),
            "ignored_columns": self.ignored_columns,
        }


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _float(raw: Any) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value


def _timestamp(raw: Any) -> float | None:
    if isinstance(raw, dt.datetime):
        return raw.timestamp() if raw.tzinfo is not None else None
    if not isinstance(raw, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _not_a_time(raw: Any) -> str:
    """Why observed_at is not a time the data can use, and the fix."""
    if isinstance(raw, dt.datetime) and raw.tzinfo is None:
        return (f"{raw.isoformat()!r} has no time zone: a Parquet timestamp stored without one; store the column "
                "with its zone (for example UTC), or as RFC 3339 text with an offset")
    if isinstance(raw, str):
        try:
            parsed = dt.datetime.fromisoformat(raw.strip())
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            return (f"{raw.strip()!r} has no UTC offset, so its moment is unknown; add one, for example "
                    f"{parsed.isoformat()}Z or {parsed.isoformat()}+00:00")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "missing (an RFC 3339 time with an offset, for example 2026-01-01T00:00:00Z)"
    return f"{str(raw).strip()[:40]!r} is not an RFC 3339 time with an offset (for example 2026-01-01T00:00:00Z)"


def _not_a_label(raw: Any) -> str:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "missing (true/false, 1/0 or yes/no)"
    return f"{str(raw).strip()[:40]!r} is not true/false (or 1/0, yes/no)"


def _boolean(raw: Any) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    text = str(raw).strip().lower() if raw is not None else ""
    return True if text in _TRUE else False if text in _FALSE else None


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d+,\d+\s*$")


def not_a_number(raw: Any) -> str:
    """Why a value that should be a number is not, with the fix when it is a decimal comma."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "missing"
    if isinstance(raw, str) and _DECIMAL_COMMA.match(raw):
        return (f"{raw.strip()!r} is not a number: decimal commas are not read (1,012 could be a thousand and "
                f"twelve); write it with a decimal point, {raw.strip().replace(',', '.')!r}")
    return f"{str(raw).strip()[:40]!r} is not a number"


def _check_feature(name: str, value: float | None, raw: Any = None) -> str | None:
    bounds = FEATURE_BOUNDS[name]
    if value is None or math.isnan(value):
        return not_a_number(raw)
    if not math.isfinite(value):
        return f"{str(raw).strip()!r} is out of range: not a finite number (allowed {bounds.minimum:g}..{bounds.upper:.6g})"
    if not bounds.minimum <= value <= bounds.upper:
        return f"{value!r} is outside {bounds.minimum:g}..{bounds.upper:.6g}"
    if bounds.integer and value != int(value):
        return f"{value!r} is not an integer"
    return None


class _CheckedRows:
    """Rows checked and converted a chunk at a time: what is kept is typed arrays (a float32 vector, a time, a
    label... per row), never the text, so a file is read in memory bounded by its row count, not its size."""

    def __init__(self, source: str, names: list[str], hint: str | None = None) -> None:
        missing = [name for name in REQUIRED if name not in names]
        if missing:
            raise DataError(source, [f"column {name}: missing (required: {', '.join(REQUIRED)})" for name in missing]
                            + ([hint] if hint else []))
        self.source = source
        self.ignored = sorted(set(names) - set(REQUIRED) - set(OPTIONAL))
        self.rows = 0
        self.problems: list[tuple[int, str]] = []
        self.vectors: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.pnl: list[np.ndarray] = []
        self.prev: list[np.ndarray] = []
        self.ids: list[str] = []
        self.seen: set[str] = set()  # a set, not id -> row: the first rows of repeated ids are found at the end
        self.repeats: list[tuple[int, str]] = []
        self.streams: dict[str, int] = {}
        self.last_of_stream: dict[int, int] = {}  # stream index: its latest row
        self.last_time: dict[int | None, tuple[int, float]] = {}  # stream index (None: no stream): row, time

    def add(self, columns: dict[str, list[Any]], broken: dict[int, str]) -> None:
        """The next rows (column lists of equal length; broken: chunk row index -> why it is not a row)."""
        base = self.rows
        n = len(columns["opportunity_id"])
        self.rows += n
        chunk_problems: list[tuple[int, str]] = [(base + row, f"row {base + row + 1}: {why}")
                                                 for row, why in broken.items()]

        def report(row: int, column: str, message: str) -> None:
            if row not in broken:
                chunk_problems.append((base + row, f"row {base + row + 1}, column {column}: "
                                                   f"{message}"))

        vectors = np.zeros((n, N_FEATURES), dtype=np.float32)
        for j, name in enumerate(FEATURE_NAMES):
            vectors[:, j] = _feature_column(name, columns[name], report)
        for i, raw in enumerate(columns["opportunity_id"]):
            text = "" if raw is None else str(raw).strip()
            if not 0 < len(text) <= 128:
                report(i, "opportunity_id", "must be 1 to 128 characters")
            elif text in self.seen:
                if i not in broken:
                    self.repeats.append((base + i, text))
            else:
                self.seen.add(text)
            self.ids.append(text)
        times, timed = _parsed_column("observed_at", columns["observed_at"], _timestamp, _not_a_time, np.float64,
                                      report)
        labels, _ = _parsed_column("success", columns["success"], _boolean, _not_a_label, np.int8, report)
        pnl = np.full(n, np.nan)
        for i, raw in enumerate(columns.get("realised_pnl_usd", ())):
            value = _float(raw)
            if value is None and raw not in (None, "") and not (isinstance(raw, float) and math.isnan(raw)):
                report(i, "realised_pnl_usd", not_a_number(raw))
            elif value is not None and math.isfinite(value):
                pnl[i] = value
        prev = np.full(n, -1, np.int64)
        for i, raw in enumerate(columns.get("stream", [None] * n)):
            stream = None if raw is None or str(raw).strip() == "" else self.streams.setdefault(str(raw),
                                                                                                len(self.streams))
            if stream is not None:
                prev[i] = self.last_of_stream.get(stream, -1)
                self.last_of_stream[stream] = base + i
            if not timed[i]:  # its time is reported already; the order is judged on the times that parse
                continue
            earlier = self.last_time.get(stream)
            if earlier is not None and times[i] < earlier[1]:
                what = f"stream {raw!r}" if stream is not None else "the file (no stream column)"
                report(i, "observed_at", f"time goes backwards in {what} (row {earlier[0] + 1} is "
                                         "later)")
            self.last_time[stream] = (base + i, float(times[i]))
        chunk_problems.sort(key=lambda problem: problem[0])
        self.problems += chunk_problems
        self.vectors.append(vectors)
        self.times.append(times)
        self.labels.append(labels)
        self.pnl.append(pnl)
        self.prev.append(prev)

    @property
    def problem_count(self) -> int:
        return len(self.problems) + len(self.repeats)

    def dataset(self) -> Dataset:
        """The Dataset of every row added; DataError with every problem found."""
        if self.rows == 0:
            raise DataError(self.source, ["no rows"])
        if self.repeats:
            wanted = {text for _, text in self.repeats}
            first: dict[str, int] = {}
            for row, text in enumerate(self.ids):
                if text in wanted:
                    first.setdefault(text, row)
            self.problems += [(row, f"row {row + 1}, column opportunity_id: {text!r} already at "
                                    f"row {first[text] + 1}") for row, text in self.repeats]
            self.problems.sort(key=lambda problem: problem[0])
        if self.problems:
            raise DataError(self.source, [message for _, message in self.problems])
        labels = np.concatenate(self.labels)
        if len(set(labels.tolist())) < 2:
            raise DataError(self.source, [f"column success: every row is {bool(labels[0])}; training needs "
                                          "successes and failures"])
        self.seen.clear()
        ids = np.empty(self.rows, dtype=object)
        ids[:] = self.ids
        self.ids.clear()
        return Dataset(self.source, np.concatenate(self.vectors), np.concatenate(self.prev), np.arange(self.rows),
                       labels, np.concatenate(self.times), ids, np.concatenate(self.pnl),
                       ignored_columns=self.ignored, unique_ids=True)


def _feature_column(name: str, raw_values: list[Any], report: Callable[[int, str, str], None]) -> np.ndarray:
    """One feature's values as float64, each problem reported (a value with a problem becomes 0)."""
    try:  # the common case at C speed: every value a number
        values = np.asarray(raw_values, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is not None:
        bounds = FEATURE_BOUNDS[name]
        fine = (values >= bounds.minimum) & (values <= bounds.upper)
        if bounds.integer:
            fine &= values == np.round(values)
        if fine.all():
            return values
        suspects = np.flatnonzero(~fine)
    else:
        values = np.zeros(len(raw_values))
        suspects = np.arange(len(raw_values))
    for i in suspects:
        raw = raw_values[i]
        value = _float(raw)
        problem = _check_feature(name, value, raw)
        if problem:
            report(int(i), name, problem)
            values[i] = 0.0
        else:
            values[i] = value
    return values


def _parsed_column(column: str, raw_values: list[Any], parse: Callable[[Any], Any], why_not: Callable[[Any], str],
                   dtype: type, report: Callable[[int, str, str], None]) -> tuple[np.ndarray, np.ndarray]:
    """The parsed values (0 where a value does not parse, each reported with why_not) and which parsed."""
    values: np.ndarray = np.zeros(len(raw_values), dtype=dtype)
    parsed = np.zeros(len(raw_values), dtype=bool)
    for i, raw in enumerate(raw_values):
        value = parse(raw)
        if value is None:
            report(i, column, why_not(raw))
        else:
            values[i] = value
            parsed[i] = True
    return values, parsed


# What a file that is not CSV text starts with, and the fix; gzip is read as it is.
_NOT_TEXT = (
    (b"PK\x03\x04", "a ZIP archive; unzip it and give the CSV file inside"),
    (b"BZh", "bzip2-compressed; decompress it (bunzip2), or compress it with gzip, which is read as it is"),
    (b"\xfd7zXZ\x00", "xz-compressed; decompress it (unxz), or compress it with gzip, which is read as it is"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; decompress it (unzstd), or compress it with gzip, which is read as it is"),
)
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
READ_BYTES = 1 << 20
# A line longer than this is refused rather than held in memory: no CSV row of this format comes near it.
MAX_LINE_BYTES = 16 << 20


def _magic(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


def _open_bytes(path: Path) -> BinaryIO:
    """The file's bytes: gzip decompressed as they are read; other archives and compressions named, not read."""
    head = _magic(path)
    if head.startswith(GZIP_MAGIC):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            raise DataError(str(path), [f"the file is {what}"])
    return open(path, "rb")


def _raw_lines(stream: BinaryIO, source: str) -> Iterator[bytes]:
    """Lines ended by LF, CRLF or a CR alone (spreadsheets on old Macs write those), without their ending."""
    pending = b""
    number = 0
    while True:
        try:
            data = stream.read(READ_BYTES)
        except (OSError, EOFError, zlib.error) as error:  # a damaged or cut gzip stream
            raise DataError(source, [f"line {number + 1}: the compressed file is damaged or cut off "
                                     f"({type(error).__name__}: {error}); compress it again"]) from None
        pending += data
        start = 0
        for match in _LINE_BREAK.finditer(pending):
            if match.group() == b"\r" and match.end() == len(pending) and data:
                break  # a CR at the end of what was read: an LF may follow in the next read
            number += 1
            yield pending[start:match.start()]
            start = match.end()
        pending = pending[start:]
        if len(pending) > MAX_LINE_BYTES:
            raise DataError(source, [f"line {number + 1}: over {MAX_LINE_BYTES >> 20} MB without a line break; is it "
                                     "a CSV file?"])
        if not data:
            if pending:
                yield pending
            return


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, each ended by a line feed: UTF-8, a byte-order mark dropped; DataError naming the
    line of a byte that is not UTF-8."""
    with _open_bytes(path) as stream:
        for number, line in enumerate(_raw_lines(stream, str(path)), 1):
            if number == 1:
                if line.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in line:
                    raise DataError(str(path), ["line 1: the file is UTF-16 (or another encoding with NUL bytes); "
                                                "save it as UTF-8"])
                line = line.removeprefix(codecs.BOM_UTF8)
            try:
                yield line.decode("utf-8") + "\n"
            except UnicodeDecodeError as error:
                raise DataError(str(path), [f"line {number}: byte 0x{line[error.start]:02x} (the line's byte "
                                            f"{error.start + 1}) is not UTF-8; save the file as UTF-8 (from Latin-1 "
                                            "or Windows-1252, for example with iconv -f latin1 -t utf-8)"]) from None


def _csv_problem(error: csv.Error, line: int) -> str:
    """A csv module error as a problem naming its line and the fix."""
    message = str(error)
    if "field larger than field limit" in message:
        return (f"line {line}: a field runs over {csv.field_size_limit():,} characters, most likely from a quote "
                '(") opened and never closed, which makes the rest of the file one field; close the quote, or '
                "remove it")
    if "NUL" in message:
        return f"line {line}: a NUL byte: the file is not text (save it as UTF-8 CSV)"
    return f"line {line}: not well-formed CSV ({message}); check its quotes"


def _delimiter(header: str) -> str:
    """The delimiter that splits the header into the most fields (a comma on a tie)."""
    return max(DELIMITERS, key=lambda candidate: len(next(csv.reader([header], delimiter=candidate))))


def read_csv(path: Path) -> Dataset:
    """A CSV file (gzip-compressed or not), read CHUNK_ROWS rows at a time (memory bounded by the rows, not the
    file's size)."""
    lines = _text_lines(path)
    header = next(lines, None)
    if header is None or not header.strip():
        raise DataError(str(path), ["the file is empty (no header row)"])
    try:
        delimiter = _delimiter(header)
        names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter))]
    except csv.Error as error:
        raise DataError(str(path), [_csv_problem(error, 1)]) from None
    repeated = sorted({name for name in names if names.count(name) > 1 and name})
    if repeated:
        raise DataError(str(path), [f"line 1: the column {name!r} appears {names.count(name)} times (columns "
                                    f"{', '.join(str(i + 1) for i, n in enumerate(names) if n == name)}); rename or "
                                    "remove all but one" for name in repeated])
    others = [shown for candidate, shown in zip(DELIMITERS, ("commas", "semicolons", "tabs", "bars"))
              if candidate != delimiter and candidate in header]
    hint = (f"hint: the header is split by {'commas' if delimiter == ',' else repr(delimiter)} but also holds "
            f"{' and '.join(others)}; check the delimiter and the column names" if others else None)
    checked = _CheckedRows(str(path), names, hint)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    broken: dict[int, str] = {}
    index = -1
    reader = csv.reader(lines, delimiter=delimiter)
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            raise DataError(str(path), [_csv_problem(error, reader.line_num + 1)]) from None
        if row is None:
            break
        if not row:
            continue  # a blank line
        index += 1
        if len(row) != len(names):
            broken[index] = (f"short row: {len(row)} of the header's {len(names)} fields" if len(row) < len(names)
                             else f"long row: {len(row)} fields, the header has {len(names)}")
            row = (row + [""] * len(names))[:len(names)]
        for name, value in zip(names, row):
            columns[name].append(value)
        if index + 1 == CHUNK_ROWS:
            checked.add(columns, broken)
            columns, broken, index = {name: [] for name in names}, {}, -1
            if checked.problem_count >= MAX_PROBLEMS:
                break
    if index >= 0:
        checked.add(columns, broken)
    if checked.problem_count >= MAX_PROBLEMS:
        checked.problems.append((checked.rows, f"(reading stopped after row {checked.rows}: {MAX_PROBLEMS:,} "
                                               "problems or more)"))
    return checked.dataset()


def read_parquet(path: Path) -> Dataset:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(str(path), ["reading Parquet needs pyarrow (pip install 'omni-mev[train]')"]) from None
    import pyarrow as pa

    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataError(str(path), [f"the column {name!r} appears {names.count(name)} times; rename or remove all "
                                        "but one" for name in repeated])
        checked = _CheckedRows(str(path), names)
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            checked.add(batch.to_pydict(), {})
    except (pa.ArrowException, OSError) as error:
        raise DataError(str(path), [f"not a readable Parquet file ({type(error).__name__}: {error})"]) from None
    return checked.dataset()


def read_ledger(url: str, since: float = 0.0, until: float | None = None) -> Dataset:
    """Every prediction in the ledger (made in [since, until]) with an executed outcome: its window, label, PnL."""
    import sqlalchemy as sa

    from omni_mev.database import create_engine
    from omni_mev.ledger.store import read_records

    engine = create_engine(url)
    try:
        records = read_records(engine, since, until)
    except sa.exc.SQLAlchemyError as error:
        raise DataError(url, [f"cannot read the ledger: {type(error).__name__}: {error}"]) from None
    finally:
        engine.dispose()
    labelled = np.flatnonzero(records.executed & np.isfinite(records.success))
    labels = records.success[labelled].astype(np.int8)
    if len(set(labels.tolist())) < 2:
        raise DataError(url, [f"{len(labelled)} labelled predictions; training needs successes and failures"])
    windows = [records.windows[i] for i in labelled]
    ends = np.cumsum([len(window) for window in windows])
    starts = ends - np.array([len(window) for window in windows])
    prev = np.arange(ends[-1]) - 1
    prev[starts] = -1  # each prediction's window is its own stream
    return Dataset(url, np.concatenate(windows).astype(np.float32), prev, ends - 1, labels,
                   records.predicted_at[labelled], np.array([records.opportunity_id[i] for i in labelled], dtype=object),
                   records.realised_pnl_usd[labelled])


def load(source: str) -> Dataset:
    """A CSV or Parquet file, or the ledger at a database URL."""
    if "://" in source:
        return read_ledger(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(source, ["no such file" if not path.exists() else "not a file"])
    try:
        parquet = path.suffix.lower() in {".parquet", ".pq"} or _magic(path).startswith(PARQUET_MAGIC)
        return read_parquet(path) if parquet else read_csv(path)
    except OSError as error:
        raise DataError(source, [f"cannot be read: {error.strerror or error}"]) from None


def from_simulation(stream: Any, start_epoch: float = 1.7e9) -> Dataset:
    """The simulator's stream as one stream of a Dataset, with its oracle."""
    n = len(stream)
    return Dataset(f"simulator (seed {stream.seed})", stream.features.astype(np.float32), np.arange(n) - 1,
                   np.arange(n), stream.label.astype(np.int8),
                   start_epoch + stream.timestamp_s, np.array([f"sim-{i}" for i in range(n)], dtype=object),
                   stream.pnl_usd.astype(np.float64), oracle=stream.oracle)


def write_csv(dataset: Dataset, path: Path, stream_name: str = "simulated") -> None:
    """The dataset in the documented CSV format (with a stream column when it has history)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURE_NAMES, "opportunity_id", "observed_at", "success", "stream", "realised_pnl_usd"])
        for i in range(len(dataset)):
            vector = dataset.vectors[dataset.current[i]]
            writer.writerow([*(f"{float(v):.7g}" for v in vector), dataset.opportunity_id[i],
                             iso_time(dataset.observed_at[i]), "true" if dataset.label[i] else "false",
                             stream_name, "" if math.isnan(dataset.pnl[i]) else f"{dataset.pnl[i]:.4f}"])


def iso_time(timestamp: float) -> str:
    """RFC 3339 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")
