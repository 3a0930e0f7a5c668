"""The lake: one root (a local folder or any pyarrow filesystem URI), one folder of Parquet per table.

Writes are atomic per part (written under a temporary name, then renamed), so a reader never
sees half a file and a killed writer leaves nothing to clean up but ``.tmp`` files. Each table
also carries two small JSON files that make stages cacheable and resumable:

- ``_started.json``: the stage's *spec* (input digests, config digest, code digest), written when
  the stage starts. A rerun with the same spec resumes: finished parts are kept and only input
  rows whose key is missing from the output are processed.
- ``_manifest.json``: the spec plus row counts per status, written when the stage completes.
  A rerun whose spec matches a manifest is skipped (cache hit).

A rerun with a different spec clears the table and starts fresh. Nothing here imports Ray.

Guards against losing data:

- The manifest lists every part (name, size, rows). Reading a table, or digesting it as a
  stage's input, checks the parts against it: a missing, truncated or stray part is a LakeError
  that names the table and the file. A rerun of the stage that writes the table moves bad and
  stray files aside into ``<root>/_quarantine/`` (never deleted) and resumes, redoing only the
  rows that are missing.
- A lake is marked when created (``_lake.json`` in its root). Tables are cleared only in a
  marked lake, so pointing ``lake:`` at a folder that holds other files deletes nothing.
- One writer at a time: see catalog/lake_lock.py.

A table may be split into partitions, ``<table>/<partition>`` (for example ``pairs/degraded``
and ``pairs/negative``, or ``restorations/<run_id>``), each written by one stage with its own
manifest; reading ``<table>`` reads every partition. Partition folders carry no ``key=value``
so that readers never add a column from the path.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from catalog import layout
from catalog.lake_parts import part_list, part_problems, quarantine
from catalog.schemas import EXTRA_PREFIXES, TABLES

log = logging.getLogger(__name__)

MARK = "_lake.json"  # written in a lake's root when the lake is created
QUARANTINE = layout.QUARANTINE
# what the project itself writes in a lake root besides tables (MLflow's store, stage records, ...)
OWN_ENTRIES = {MARK, "_lock.json", *layout.FOLDER_NAMES}


class SchemaError(ValueError):
    """Rows handed to the lake do not fit the table's schema."""


class LakeError(ValueError):
    """The lake's files do not match its manifests, or the lake path cannot be a lake."""


def conform(table_name: str, data: pa.Table) -> pa.Table:
    """Validate ``data`` against the table's schema and return it with the schema's column order.

    Missing nullable columns are filled with nulls; a missing non-nullable column, a null in a
    non-nullable column, a column that cannot be cast, or an unknown column is a SchemaError.
    """
    table_name = base_table(table_name)
    schema = TABLES[table_name]
    extras = EXTRA_PREFIXES.get(table_name, {})
    unknown = [
        c for c in data.column_names if schema.get_field_index(c) < 0 and not any(c.startswith(p) for p in extras)
    ]
    if unknown:
        raise SchemaError(f"table {table_name!r}: unknown columns {unknown}; allowed: {schema.names}")
    arrays, fields = [], []
    for f in schema:
        if f.name in data.column_names:
            col = data.column(f.name)
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaError(f"table {table_name!r}: column {f.name!r} of type {col.type} is not {f.type}: {e}")
            if not f.nullable and col.null_count:
                raise SchemaError(f"table {table_name!r}: column {f.name!r} has {col.null_count} nulls")
        elif f.nullable:
            col = pa.nulls(len(data), f.type)
        else:
            raise SchemaError(f"table {table_name!r}: missing required column {f.name!r}")
        arrays.append(col)
        fields.append(f)
    for c in data.column_names:
        if schema.get_field_index(c) < 0:
            prefix = next(p for p in extras if c.startswith(p))
            arrays.append(data.column(c).cast(extras[prefix]))
            fields.append(pa.field(c, extras[prefix]))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def base_table(table: str) -> str:
    """``"pairs/negative"`` -> ``"pairs"``: the table a partition belongs to."""
    return table.split("/", 1)[0]


ROOT = Path(__file__).resolve().parents[1]  # the checkout: the folder that holds catalog/


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of project module ``name`` under ``root`` (``a.b`` -> a/b.py or a/b/__init__.py)."""
    base = root.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _file_module(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (function-level imports included)."""
    module = _file_module(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".") if package else []
                up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                base = ".".join([*up, node.module] if node.module else up)
            else:
                base = node.module or ""
            # ``from pkg import name``: name may be a submodule or an attribute of pkg
            names = [base, *(f"{base}.{a.name}" for a in node.names if a.name != "*")]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # a dotted import also runs every package __init__ on its way
            for i in range(1, len(parts) + 1):
                if _module_file(".".join(parts[:i]), root) is not None:
                    found.add(".".join(parts[:i]))
    return found


def module_closure(*modules: Any, root: Path | None = None) -> list[Path]:
    """The source files of ``modules`` and of every project module they import, transitively.

    Imports are read from the source (``ast``), not from ``sys.modules``, so a lazy import inside a
    function counts as well; modules outside ``root`` (torch, diffusers, ...) are not followed."""
    root = Path(root or ROOT).resolve()
    todo = [m if isinstance(m, str) else m.__name__ for m in modules]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            raise ValueError(f"code_digest: module {name!r} is not a file under {root}")
        seen[name] = path
        todo.extend(_imports(path, root) - seen.keys())
    return sorted(seen.values())


def code_digest(*modules: Any, root: Path | None = None) -> str:
    """sha256 over the source of ``modules`` (module objects or dotted names) and of every project
    module they import, transitively: editing any file a stage runs invalidates its cache, and no
    hand-written list of modules can forget one."""
    root = Path(root or ROOT).resolve()
    h = hashlib.sha256()
    for path in module_closure(*modules, root=root):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a local path, a file:// URI or a URI such as s3://bucket/prefix."""
    if "://" in path and not path.startswith("file://"):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))


@dataclass
class StageSpec:
    """What a stage's output depends on; equal specs mean equal outputs."""

    stage: str
    table: str
    inputs: dict[str, str] = field(default_factory=dict)  # input table -> its digest
    config: str = ""  # digest of the stage's config section
    code: str = ""  # digest of the stage's code

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "table": self.table, "inputs": self.inputs, "config": self.config, "code": self.code}


class Lake:
    """Tables as folders of Parquet under one root, on any pyarrow filesystem."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if not root.strip():
            raise LakeError("lake: an empty path is not allowed (it would be the working directory); "
                            "give a folder such as 'lake' or a URI such as s3://bucket/prefix")
        self.fs, self.base = filesystem(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root
        info = self.fs.get_file_info(self.base)
        if info.type == pafs.FileType.File:
            raise LakeError(f"lake: {root!r} is a file, not a folder")
        try:
            if info.type == pafs.FileType.NotFound:
                self.fs.create_dir(self.base, recursive=True)
            if not self.marked() and self._adoptable():
                self._write_json(f"{self.base}/{MARK}", {"lake": 1, "created_at": _now()})
        except OSError as e:  # before any stage (and Ray) starts, not half way
            raise LakeError(f"lake: {root!r} cannot be created or written: {e}") from None

    def _adoptable(self) -> bool:
        """An unmarked root becomes a lake when it holds nothing but what this project writes there:
        empty (a new lake), or only an MLflow store and table folders that carry a stage's
        ``_started.json`` (a lake from before marks). A folder of anything else is left alone."""
        for entry in self.fs.get_file_info(pafs.FileSelector(self.base)):
            name = entry.path.rstrip("/").rsplit("/", 1)[-1]
            if name in OWN_ENTRIES:
                continue
            started = [f"{entry.path}/_started.json", f"{entry.path}/_manifest.json"]
            if name in TABLES and any(self.fs.get_file_info(f).type == pafs.FileType.File for f in started):
                continue
            return False
        return True

    def marked(self) -> bool:
        """Whether the root carries the mark of a lake made here (tables are cleared only then)."""
        return self.fs.get_file_info(f"{self.base}/{MARK}").type == pafs.FileType.File

    # -- paths ---------------------------------------------------------------------------
    def path(self, table: str) -> str:
        return f"{self.base.rstrip('/')}/{table}"

    def uri(self, table: str) -> str:
        """A path DuckDB and Ray can read (local path, or the original URI scheme)."""
        if self.local:
            return self.path(table)
        return f"{self.root.rstrip('/')}/{table}"

    def files(self, table: str) -> list[str]:
        """Finished part files of a table or partition, all partitions included, sorted (never ``.tmp``)."""
        info = self.fs.get_file_info(self.path(table))
        if info.type != pafs.FileType.Directory:
            return []
        sel = pafs.FileSelector(self.path(table), recursive=True)
        return sorted(i.path for i in self.fs.get_file_info(sel) if i.path.endswith(".parquet"))

    def exists(self, table: str) -> bool:
        return bool(self.files(table))

    # -- read ----------------------------------------------------------------------------
    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        self.verify(table)
        files = self.files(table)
        if not files:
            empty = TABLES[base_table(table)].empty_table()
            return empty if columns is None else empty.select(columns)
        parts = [pq.read_table(f, columns=columns, filesystem=self.fs) for f in files]
        return pa.concat_tables(parts, promote_options="default")

    def digest(self, table: str) -> str:
        """Identity of a table's current content: its manifest's spec, counts and parts if complete
        (not its timings: re-finishing the same content changes nothing downstream), else its part
        names and sizes. Raises LakeError when the parts do not match the manifest."""
        self.verify(table)
        m = self.manifest(table)
        if m is not None:
            content = {k: m.get(k) for k in ("spec", "counts", "parts")}
            return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
        h = hashlib.sha256()
        for f in self.files(table):
            h.update(f"{os.path.basename(f)}:{self.fs.get_file_info(f).size}".encode())
        return h.hexdigest()[:16]

    # -- write ---------------------------------------------------------------------------
    def write_part(self, table: str, data: pa.Table, name: str | None = None) -> str | None:
        """Validate and atomically write one part; returns its path (None for an empty part)."""
        data = conform(table, data)
        if data.num_rows == 0:
            return None
        self.fs.create_dir(self.path(table), recursive=True)
        name = name or f"part-{uuid.uuid4().hex}"
        final = f"{self.path(table)}/{name}.parquet"
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(data, out, compression="zstd")
        self.fs.move(tmp, final)
        return final

    def rewrite_parts(self, table: str, fn: Callable[[pa.Table], pa.Table | None]) -> int:
        """Apply ``fn`` to each part; a part for which fn returns a table is replaced atomically.

        Returns the number of parts rewritten. Used for global passes (exact and near duplicates).
        """
        n = 0
        for f in self.files(table):
            data = pq.read_table(f, filesystem=self.fs)
            new = fn(data)
            if new is None:
                continue
            new = conform(table, new)
            tmp = f"{f}.{uuid.uuid4().hex[:8]}.tmp"
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(new, out, compression="zstd")
            self.fs.move(tmp, f)
            n += 1
        return n

    def clear(self, table: str) -> None:
        info = self.fs.get_file_info(self.path(table))
        if info.type == pafs.FileType.Directory:
            if not self.marked():
                raise LakeError(
                    f"lake {self.root!r} has no {MARK}: it was not created as a lake here, so {self.path(table)!r} "
                    f"is not cleared (it may hold your files). Use a new or empty folder for lake:, or, if this "
                    f"is a lake from an older version, create the mark: echo '{{}}' > {self.base}/{MARK}")
            self.fs.delete_dir_contents(self.path(table))

    # -- manifests -----------------------------------------------------------------------
    def _read_json(self, path: str) -> dict[str, Any] | None:
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            raw = f.read()
        try:
            obj = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LakeError(f"{path}: not valid JSON ({e}); delete it (the stage then resumes from its parts)") from None
        if not isinstance(obj, dict):
            raise LakeError(f"{path}: expected a JSON object, found {type(obj).__name__}")
        return obj

    def _write_json(self, path: str, obj: dict[str, Any]) -> None:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
        self.fs.move(tmp, path)

    def manifest(self, table: str) -> dict[str, Any] | None:
        return self._read_json(f"{self.path(table)}/_manifest.json")

    def begin(self, spec: StageSpec) -> str:
        """Decide how a stage runs: "cached" (skip), "resume" (keep finished parts) or "fresh"."""
        want = spec.to_json()
        m = self.manifest(spec.table)
        if m is not None and m.get("spec") == want:
            problems = self.problems(spec.table, m)
            if not problems:
                return "cached"
            # same spec, damaged output: keep the good parts, set the bad ones aside, redo the rest
            log.warning("%s: %s; repairing: bad and stray parts go to %s, missing rows are redone",
                        spec.table, "; ".join(problems), QUARANTINE)
            quarantine(self.fs, self.path(spec.table), m, f"{self.base}/{QUARANTINE}/{spec.table}")
            self.fs.delete_file(f"{self.path(spec.table)}/_manifest.json")
            self._write_json(f"{self.path(spec.table)}/_started.json", want)
            return "resume"
        started = self._read_json(f"{self.path(spec.table)}/_started.json")
        if started is not None and started == want and m is None:
            state = "resume"
        else:
            self.clear(spec.table)
            state = "fresh"
        self.fs.create_dir(self.path(spec.table), recursive=True)
        self._write_json(f"{self.path(spec.table)}/_started.json", want)
        return state

    def finish(self, spec: StageSpec, counts: dict[str, int], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the manifest that makes the next identical run a cache hit."""
        parts = part_list(self.fs, self.path(spec.table))
        m = {
            "spec": spec.to_json(),
            "counts": {k: int(v) for k, v in sorted(counts.items())},
            "rows": int(sum(counts.values())),
            "files": len(parts),
            "parts": parts,
            "completed_at": _now(),
        }
        if extra:
            m.update(extra)
        self._write_json(f"{self.path(spec.table)}/_manifest.json", m)
        return m

    # -- integrity (catalog/lake_parts.py) -------------------------------------------------
    def problems(self, table: str, m: dict[str, Any]) -> list[str]:
        """How a finished table's parts differ from its manifest ``m`` (empty: they match)."""
        return part_problems(self.fs, self.path(table), m)

    def verify(self, table: str) -> None:
        """Raise LakeError if a finished table (or any finished partition of it) does not match its manifest."""
        if self.fs.get_file_info(self.path(table)).type != pafs.FileType.Directory:
            return
        for i in self.fs.get_file_info(pafs.FileSelector(self.path(table), recursive=True)):
            if not i.path.endswith("/_manifest.json"):
                continue
            name = table + i.path[len(self.path(table)):-len("/_manifest.json")]  # the table or a partition
            bad = self.problems(name, self._read_json(i.path) or {})
            if bad:
                raise LakeError(f"table {name!r} in lake {self.root!r}: {'; '.join(bad)}. Rerun the stage that "
                                f"writes it: it sets bad parts aside in {QUARANTINE}/ and redoes the missing rows")

    def done_keys(self, table: str, key: str) -> set:
        """Keys already present in a table's finished parts (for resume)."""
        if not self.exists(table):
            return set()
        return set(self.read(table, columns=[key]).column(key).to_pylist())

    def status_counts(self, table: str, column: str = "status") -> dict[str, int]:
        data = self.read(table, columns=[column])
        if data.num_rows == 0:
            return {}
        vc = pc.value_counts(data.column(column).fill_null("null"))
        return {str(v["values"]): int(v["counts"]) for v in vc.to_pylist()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def pending(rows: pa.Table, key: str, done: Iterable) -> pa.Table:
    """Rows of ``rows`` whose ``key`` is not in ``done``."""
    done = list(done)
    if not done:
        return rows
    mask = pc.invert(pc.is_in(rows.column(key), value_set=pa.array(done, type=rows.schema.field(key).type)))
    return rows.filter(mask)
