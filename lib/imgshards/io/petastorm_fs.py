"""Petastorm 0.12 writes its metadata through pyarrow's legacy ``pyarrow.filesystem`` API, and pyarrow 14
only takes the legacy Parquet code path for such a file system; its own resolver offers none for S3 that
works with today's s3fs (async) or pyarrow.fs. This adapter gives any ``pyarrow.fs`` file system (S3,
GCS, HDFS, local) that legacy face, so ``materialize_dataset`` writes to object stores too.
"""
from __future__ import annotations

import posixpath
from typing import Callable, Iterator, Optional
from urllib.parse import urlparse

import pyarrow.filesystem as legacyfs
import pyarrow.fs as pafs

from imgshards.io.filesystems import arrow_filesystem, is_object_store


class LegacyArrowFileSystem(legacyfs.FileSystem):
    """The legacy ``pyarrow.filesystem.FileSystem`` methods Parquet datasets and Petastorm use, on a
    ``pyarrow.fs.FileSystem``. Paths are the file system's own (``bucket/key`` for S3)."""

    pathsep = "/"

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs
        self._local = isinstance(fs, pafs.LocalFileSystem)

    def _path(self, path: str) -> str:
        # Petastorm hands over URL paths (/bucket/key); object stores name them bucket/key.
        return path if self._local else path.lstrip("/")

    def _type(self, path: str):
        return self.fs.get_file_info(self._path(path)).type

    def exists(self, path: str) -> bool:
        return self._type(path) != pafs.FileType.NotFound

    def isdir(self, path: str) -> bool:
        return self._type(path) == pafs.FileType.Directory

    def isfile(self, path: str) -> bool:
        return self._type(path) == pafs.FileType.File

    def _isfilestore(self) -> bool:
        return self._local

    def ls(self, path: str) -> list:
        return sorted(info.path for info in self.fs.get_file_info(pafs.FileSelector(self._path(path))))

    def walk(self, top_path: str) -> Iterator[tuple]:
        directories, files = [], []
        for info in self.fs.get_file_info(pafs.FileSelector(self._path(top_path))):
            (directories if info.type == pafs.FileType.Directory else files).append(info.base_name)
        yield top_path, sorted(directories), sorted(files)
        for name in sorted(directories):
            yield from self.walk(posixpath.join(top_path, name))

    def open(self, path: str, mode: str = "rb"):
        if mode in ("rb", "r"):
            return self.fs.open_input_file(self._path(path))
        if mode in ("wb", "w"):
            return self.fs.open_output_stream(self._path(path))
        raise ValueError(f"mode {mode!r} is not supported")

    def mkdir(self, path: str, create_parents: bool = True) -> None:
        self.fs.create_dir(self._path(path), recursive=create_parents)

    def delete(self, path: str, recursive: bool = False) -> None:
        if self.isdir(path):
            self.fs.delete_dir(self._path(path))
        else:
            self.fs.delete_file(self._path(path))

    rm = delete


def filesystem_factory(url: str, endpoint=None, path_style=None, region=None) -> Callable[[], LegacyArrowFileSystem]:
    """A picklable factory of the legacy file system for ``url`` (Petastorm calls it on executors too)."""

    def factory() -> LegacyArrowFileSystem:
        return LegacyArrowFileSystem(arrow_filesystem(url, endpoint, path_style, region)[0])

    return factory


def petastorm_location(url: str, endpoint=None, path_style=None,
                       region=None) -> tuple[str, Optional[Callable[[], LegacyArrowFileSystem]]]:
    """(URL, file-system factory) to hand Petastorm for ``url``: on object stores the ``file://`` form of the
    same path (Petastorm 0.12 parses the URL only for its path, and its own resolver has no object-store file
    system that works with pyarrow 14) with our factory; anything else as it is, with no factory."""
    if not is_object_store(url):
        return url, None
    parsed = urlparse(url)
    return f"file:///{parsed.netloc}{parsed.path}", filesystem_factory(url, endpoint, path_style, region)
