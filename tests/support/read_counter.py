"""A local pyarrow filesystem that counts what is read through it: bytes and the files opened.

The oracle for "each training worker reads only its share" (tests/stages/test_train_shards.py,
bench/train_read.py): the bytes come from the file handles Parquet reads through, not from metadata.
"""
from __future__ import annotations

import io
from collections import Counter

import pyarrow as pa
import pyarrow.fs as pafs


class _Counted(io.RawIOBase):
    def __init__(self, path: str, counter: "ReadCounter"):
        self._f = open(path, "rb")
        self._path, self._counter = path, counter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._counter.bytes[self._path] += len(data)
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class ReadCounter(pafs.FileSystemHandler):
    """Delegates to the local filesystem; ``bytes[path]`` and ``opened[path]`` count the reads."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()
        self.bytes: Counter = Counter()
        self.opened: Counter = Counter()

    def filesystem(self) -> pafs.PyFileSystem:
        return pafs.PyFileSystem(self)

    def total(self) -> int:
        return sum(self.bytes.values())

    def get_type_name(self) -> str:
        return "read-counter"

    def equals(self, other) -> bool:
        return other is self

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def open_input_file(self, path: str):
        self.opened[path] += 1
        return pa.PythonFile(_Counted(path, self), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def _read_only(self, *args, **kwargs):
        raise OSError("ReadCounter is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only
