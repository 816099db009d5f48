"""The sweep's tidy table: one row per run, written atomically as runs finish.

The CSV is the sweep's only state. Every time rows arrive the whole table is written to a
temporary file beside it and renamed over it, so the file on disk is always a complete table
(never half a row), and an interrupted sweep keeps every finished row. Reopening the table
(:class:`SweepTable`) tells which runs are done (:meth:`SweepTable.done`); failed rows are run
again. Parquet (:func:`write_parquet`) is written from the same rows, with typed columns.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mmu.errors import MMUInputError

# Columns that lead every row, in this order; stats columns follow in the order they first appear.
ID_COLUMNS = (
    "run",
    "key",
    "input",
    "input_kind",
    "input_sha256",
    "mode",
    "mode_label",
    "status",
    "error",
    "simulated",
    "wall_s",
    "mmu_version",
)


# Identity columns that are text whatever they look like (a key or hash may be all digits).
TEXT_COLUMNS = ("key", "input", "input_kind", "input_sha256", "mode", "mode_label", "status", "error", "mmu_version")


class SweepTable:
    """The rows of ``path`` (read back if it exists) plus the rows added since."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        self.columns: list[str] = list(ID_COLUMNS)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                if "key" not in header or "status" not in header:
                    raise MMUInputError(
                        f"{self.path} exists and is not an mmu sweep table (no 'key' and 'status' columns); "
                        "choose another -o or remove it"
                    )
                for k, row in enumerate(reader, start=2):
                    if None in row or any(v is None for v in row.values()):
                        raise MMUInputError(f"{self.path}: line {k}: wrong number of fields; the table is damaged")
                    self.rows[row["key"]] = row
        except OSError as exc:
            raise MMUInputError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise MMUInputError(f"{self.path}: not a CSV sweep table: {exc}") from None
        for c in header:
            if c not in self.columns:
                self.columns.append(c)

    def done(self, key: str) -> bool:
        """Whether run ``key`` is in the table and succeeded (failed runs are run again)."""
        row = self.rows.get(key)
        return row is not None and row.get("status") == "ok"

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Add (or replace, by key) ``rows`` and write the table."""
        for row in rows:
            self.rows[row["key"]] = row
            for c in row:
                if c not in self.columns:
                    self.columns.append(c)
        self.write()

    def ordered(self) -> list[dict[str, Any]]:
        """The rows in grid order."""
        return sorted(self.rows.values(), key=lambda r: int(r["run"]))

    def write(self) -> None:
        """Write the whole table to a temporary file and rename it over ``path`` (atomic)."""
        folder = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=self.columns, restval="")
                w.writeheader()
                w.writerows(self.ordered())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def _typed_column(values: list[Any]) -> list[Any]:
    """One column's values with one type: int, float, bool or str (None for empty)."""
    present = [v for v in values if v not in ("", None)]
    text = [str(v) for v in present]
    if all(isinstance(v, bool) or t in ("True", "False") for v, t in zip(present, text, strict=True)):
        return [None if v in ("", None) else (v if isinstance(v, bool) else str(v) == "True") for v in values]
    if all(not isinstance(v, bool) and _INT.match(t) for v, t in zip(present, text, strict=True)):
        return [None if v in ("", None) else int(v) for v in values]
    if all(not isinstance(v, bool) and _FLOAT.match(t) for v, t in zip(present, text, strict=True)):
        return [None if v in ("", None) else float(v) for v in values]
    return [None if v in ("", None) else str(v) for v in values]


def require_pyarrow() -> None:
    """MMUInputError with the install hint unless the optional pyarrow is installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MMUInputError('--parquet needs pyarrow, which is not installed: pip install "mmu-lab[parquet]"') from None


def write_parquet(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    """``rows`` as a Parquet file with one type per column (needs the optional pyarrow)."""
    require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = {
        c: pa.array([None if r.get(c, "") in ("", None) else str(r[c]) for r in rows], type=pa.string())
        if c in TEXT_COLUMNS
        else _typed_column([r.get(c, "") for r in rows])
        for c in columns
    }
    table = pa.table(data)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
