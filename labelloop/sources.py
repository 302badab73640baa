"""Reading a source (labelloop.settings.SourceSettings) into a raw table, with its digest.

Files: one path, a list, or globs (sorted; `package:<pkg>/<sub>` inside an installed package);
CSV/TSV/JSONL/Parquet/TXT (one text per line) by suffix or `format`; a `.zip` is read member by
member (`member` names one, or a glob; without it, every data file inside). A directory
written by Hugging Face `datasets` (`save_to_disk`) is read with `load_from_disk` (`split` picks
one of a DatasetDict). SQL: any SQLAlchemy URL plus a `query` or a `table`. Document stores
(MongoDB, Elasticsearch, ...) export to one of these (JSONL, Parquet, or an SQL table).

Every problem is a `DataError` naming the source, raised before anything is trained or written.
The digest identifies the data exactly: the bytes of each file (zip members included), or the
rows a query or a dataset directory returned. Columns are not interpreted here (labelloop.data
and annotation/pool.py do that), so any task family can read its own columns.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from labelloop.settings import ConfigError, SourceSettings, resolve_path


class DataError(ValueError):
    """A dataset problem, found before any training starts."""


FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
           ".parquet": "parquet", ".txt": "txt"}


@dataclass(frozen=True)
class SourceInfo:
    """What was read: shown in summaries, recorded with the model, logged to MLflow."""

    role: str       # train | test | validation | pool
    uri: str        # file path(s) or the SQL URL without its password
    kind: str       # file | zip | sql | hf
    digest: str     # sha256 of the bytes (files) or of the rows (sql, hf)
    rows: int
    shown: str = ""  # how summaries and errors name it, when not `uri` (a `package:` path)

    @property
    def name(self) -> str:
        return self.shown or self.uri

    def to_dict(self) -> dict:
        return {"role": self.role, "uri": self.uri, "kind": self.kind, "digest": self.digest,
                "rows": self.rows}


def detect_format(name: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        return FORMATS[Path(name).suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot tell the format of {name} from its suffix; set the source's format to one "
            f"of {sorted(set(FORMATS.values()))}") from None


def parse_table(raw: bytes, name: str, fmt: str, encoding: str) -> pd.DataFrame:
    """Bytes of one file as a table. CSV/TSV cells are strings (an empty cell is ""); JSONL and
    Parquet keep their types (null, numbers): labelloop.data treats both the same way."""
    fmt = detect_format(name, fmt)
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(io.BytesIO(raw), sep="\t" if fmt == "tsv" else ",",
                               encoding=encoding, dtype=str, keep_default_na=False,
                               encoding_errors="replace")
        if fmt == "jsonl":
            text = raw.decode(encoding, errors="replace")
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
        if fmt == "txt":
            lines = raw.decode(encoding, errors="replace").splitlines()
            return pd.DataFrame({"text": lines})
        return pd.read_parquet(io.BytesIO(raw))
    except (ValueError, pd.errors.ParserError, OSError, UnicodeError) as exc:
        raise DataError(f"could not read {name} as {fmt}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors are not ValueErrors
        raise DataError(f"could not read {name} as {fmt}: {type(exc).__name__}: {exc}") from exc


# What a missing file is called in the error, by the source's role: a pool file is not the
# dataset, and a user with a train and a test source needs to know which one is missing.
_MISSING_FILE = {"train": "dataset file", "test": "test source file",
                 "validation": "validation source file", "pool": "pool file"}


def expand_paths(spec: str | list[str], role: str = "train") -> list[Path]:
    """Files named by a path, a list of paths, or globs, in a stable (sorted) order."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for one in specs:
        try:
            path = resolve_path(one)
        except ConfigError as exc:
            raise DataError(str(exc)) from exc
        if glob.has_magic(str(path)):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            if not found:
                raise DataError(f"no file matches {one!r} (the {role} source)")
            out.extend(found)
        elif not path.exists():
            raise DataError(f"{_MISSING_FILE.get(role, 'file')} not found: {path}")
        else:
            out.append(path)
    return out


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in
                                 ("dataset_info.json", "dataset_dict.json", "state.json"))


def _frame_digest(df: pd.DataFrame) -> str:
    return hashlib.sha256(df.to_csv(index=False).encode("utf-8", "surrogatepass")).hexdigest()


def _read_hf(path: Path, split: Optional[str]) -> pd.DataFrame:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise DataError(f"{path} is a Hugging Face dataset directory; install `datasets`") from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad directory
        raise DataError(f"could not load the Hugging Face dataset at {path}: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in loaded:
            raise DataError(f"{path} holds the splits {names}: name one with the source's "
                            f"`split`" + (f" ({split!r} is not one of them)" if split else ""))
        loaded = loaded[split]
    return loaded.to_pandas()


def _read_zip(path: Path, src: SourceSettings, encoding: str) -> tuple[pd.DataFrame, str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable zip archive: {exc}") from exc
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")
                 and not Path(n).name.startswith(".") and "__MACOSX" not in n]
        if src.member:
            chosen = sorted(n for n in names if fnmatch.fnmatch(n, src.member)
                            or fnmatch.fnmatch(Path(n).name, src.member))
            if not chosen:
                raise DataError(f"{path} has no member {src.member!r}; it holds {names[:20]}")
        else:
            chosen = sorted(n for n in names if Path(n).suffix.lower() in FORMATS)
            if not chosen:
                raise DataError(f"{path} holds no data file ({names[:20]}); name one with "
                                "`member`")
        frames, h = [], hashlib.sha256()
        for name in chosen:
            raw = archive.read(name)
            h.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
            frames.append(parse_table(raw, f"{path}:{name}", src.format, encoding))
    return pd.concat(frames, ignore_index=True), h.hexdigest()


def _first_line(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy and pandas wrap it in theirs)."""
    while exc.__cause__ is not None or getattr(exc, "orig", None) is not None:
        exc = getattr(exc, "orig", None) or exc.__cause__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_sql(src: SourceSettings) -> tuple[pd.DataFrame, str]:
    import sqlalchemy as sa

    try:
        url = sa.engine.make_url(src.url)
    except Exception as exc:  # noqa: BLE001 - ArgumentError and friends
        raise DataError(f"the SQL source URL is not a valid SQLAlchemy URL: {exc}") from None
    shown = url.render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(url)
    except Exception as exc:  # noqa: BLE001 - missing driver (NoSuchModuleError, ImportError)
        raise DataError(f"cannot use the SQL source {shown}: {exc}") from None
    try:
        conn = engine.connect()
    except Exception as exc:  # noqa: BLE001 - OperationalError, a driver's own errors
        engine.dispose()
        raise DataError(f"cannot connect to the SQL source {shown}: {_first_line(exc)}") from None
    try:
        if src.table is not None:
            if not sa.inspect(conn).has_table(src.table):
                raise DataError(f"the SQL source {shown} has no table {src.table!r}")
            df = pd.read_sql_table(src.table, conn)
        else:
            df = pd.read_sql_query(sa.text(src.query), conn)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and pandas' DatabaseError
        raise DataError(f"the SQL query on {shown} failed: {_first_line(exc)}") from None
    finally:
        conn.close()
        engine.dispose()
    return df, _frame_digest(df)


def read_source(src: SourceSettings, role: str, encoding: str) -> tuple[pd.DataFrame, SourceInfo]:
    """The raw table of a source (all its columns) and what was read."""
    enc = src.encoding or encoding
    if src.url is not None:
        df, digest = _read_sql(src)
        import sqlalchemy as sa

        uri = sa.engine.make_url(src.url).render_as_string(hide_password=True)
        what = src.table if src.table is not None else src.query
        return df, SourceInfo(role, f"{uri} ({what})", "sql", digest, len(df))
    frames, parts, kinds = [], [], set()
    paths = expand_paths(src.path, role)
    for path in paths:
        if _is_hf_dir(path):
            df = _read_hf(path, src.split)
            digest, kind = _frame_digest(df), "hf"
        elif path.is_dir():
            raise DataError(f"{path} is a directory, not a data file (a glob such as "
                            f"'{path}/*.csv' reads the files in it)")
        elif path.suffix.lower() == ".zip":
            df, digest = _read_zip(path, src, enc)
            kind = "zip"
        else:
            raw = _read_bytes(path)
            df, digest, kind = parse_table(raw, str(path), src.format, enc), \
                hashlib.sha256(raw).hexdigest(), "file"
        frames.append(df)
        parts.append(digest)
        kinds.add(kind)
    if len(paths) == 1:
        digest = parts[0]
    else:
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    uri = ", ".join(str(p) for p in paths)
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return df, SourceInfo(role, uri, "+".join(sorted(kinds)), digest, len(df),
                          shown=package_spec(src.path))


def package_spec(spec: Any) -> str:
    """A path setting as written when it points into an installed package (`package:<pkg>/...`,
    shorter than the site-packages path it resolves to), else ""."""
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    if any(isinstance(x, str) and x.startswith("package:") for x in specs):
        return ", ".join(str(x) for x in specs)
    return ""


def combined_digest(infos: list[SourceInfo]) -> str:
    """One digest over every source of a dataset, in role order (what `/metadata` shows)."""
    h = hashlib.sha256()
    for info in infos:
        h.update(f"{info.role}:{info.digest}\n".encode())
    return h.hexdigest()[:16]
