"""Walking local folders into Arrow columns, whatever the tree holds.

A user's folder may hold symbolic links that lead back up the tree (``ln -s . in/loop``), links
to folders elsewhere, named pipes, sockets, broken links and file names that are not UTF-8. None
of them may hang, exhaust memory or fail a listing:

* every folder is listed once, recognised by its device and inode (``st_dev``, ``st_ino``);
  a link to a folder already listed is skipped with a warning (a loop, or a second way to the
  same files, whose outputs would otherwise be made twice);
* folders inside INPUT are listed before any link to a folder is followed, and links in path
  order, so which path names a folder reached twice does not depend on directory order;
* a link to a folder outside INPUT that is not a loop is followed, as a shell's ``cp -rL`` or
  ``find -L`` would: its files are inputs like the others;
* names that are not UTF-8 cannot be held by an Arrow string (nor by a manifest); they are shown
  with ``\\xNN`` escapes (Python's ``backslashreplace``) and flagged, never decoded wrongly.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from dce_batch.storage.input_table import MTIME_TYPE
from dce_batch.storage.uris import is_within, storage_error

__all__ = ["LocalFiles", "displayed_path", "walk_input_folder", "walk_local_files"]

# Entries are turned into Arrow arrays in chunks of this many, so a million-file tree never
# holds a Python object per file for long.
_CHUNK_ENTRIES = 65_536


@dataclass(frozen=True)
class LocalFiles:
    """The files a walk found, as columns of equal length."""

    paths: pa.Array
    """Absolute paths; a path that is not valid UTF-8 is shown with ``\\xNN`` escapes."""
    sizes: pa.Array
    """Bytes (int64); 0 for named pipes, sockets, devices and broken links, which cannot be read."""
    mtimes: pa.Array
    """Last modification (timestamp[ns, UTC]); null where ``sizes`` is 0 for the reasons above."""
    not_utf8: pa.Array
    """Whether the path is not valid UTF-8 (bool): it is escaped, and no file has that name."""


def displayed_path(path: str) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) are written as ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Columns:
    """Rows collected as Python lists, moved into Arrow chunks every ``_CHUNK_ENTRIES`` rows."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes: list[int] = []
        self.mtimes: list[int | None] = []
        self._chunks: list[tuple[pa.Array, pa.Array, pa.Array, pa.Array]] = []

    def flush(self) -> None:
        if not self.paths:
            return
        try:
            paths, not_utf8 = pa.array(self.paths, pa.string()), pa.nulls(len(self.paths), pa.bool_())
        except UnicodeEncodeError:  # some name is not UTF-8: escape those (rare, so per row)
            shown = [displayed_path(p) for p in self.paths]
            paths = pa.array(shown, pa.string())
            not_utf8 = pa.array([a is not b for a, b in zip(shown, self.paths)], pa.bool_())
        self._chunks.append((paths, pa.array(self.sizes, pa.int64()), pa.array(self.mtimes, MTIME_TYPE),
                             not_utf8))
        self.paths, self.sizes, self.mtimes = [], [], []

    def result(self) -> LocalFiles:
        self.flush()
        if not self._chunks:
            return LocalFiles(pa.array([], pa.string()), pa.array([], pa.int64()), pa.array([], MTIME_TYPE),
                              pa.array([], pa.bool_()))
        columns = [pa.concat_arrays([chunk[i] for chunk in self._chunks]) for i in range(4)]
        columns[3] = pc.fill_null(columns[3], False)
        return LocalFiles(*columns)


def _scandir(folder: str, is_root: bool):
    """``os.scandir(folder)``, or None when a subfolder vanished or became a file meanwhile.

    Other failures (permission denied, I/O errors) raise StorageError: a folder that cannot be
    read would otherwise silently leave its images out of the run.
    """
    try:
        return os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if is_root:
            raise storage_error(exc, "list", pafs.LocalFileSystem(), displayed_path(folder)) from exc
        return None
    except OSError as exc:
        raise storage_error(exc, "list", pafs.LocalFileSystem(), displayed_path(folder)) from exc


def walk_input_folder(
    root: str,
    *,
    recursive: bool = True,
    skip_folder: Callable[[str], bool] = lambda name: False,
    warn: Callable[[str], None],
) -> LocalFiles:
    """Every file under the local folder ``root``, with its size and modification time.

    Files are regular files and links to them (size and time of the target), plus what a user
    sees as a file but cannot be read as one: named pipes, sockets, devices, broken links and
    links that loop among themselves. Those are listed (size 0, time null) so that each gets a
    manifest row saying why it was not enhanced, instead of vanishing from the run.

    ``recursive=False`` lists ``root`` alone. Subfolders whose name ``skip_folder`` accepts
    (hidden ones, manifests) are not entered. ``warn`` is called with one line for every folder
    skipped because it was already listed (see the module docstring).

    One ``stat`` per file and folder, as any listing that reports sizes needs.
    """
    columns = _Columns()
    root_stat = os.stat(root)
    listed: dict[tuple[int, int], str] = {(root_stat.st_dev, root_stat.st_ino): root}
    folders = [root]  # folders inside the tree: their device and inode are in ``listed`` already
    links: list[tuple[str, tuple[int, int]]] = []  # (path, target's key), followed in path order
    paths, sizes, mtimes = columns.paths, columns.sizes, columns.mtimes
    while folders or links:
        if folders:
            folder = folders.pop()
        else:
            folder, key = heapq.heappop(links)
            first = listed.get(key)
            if first is not None:
                warn(_already_listed(folder, first, link=True))
                continue
            listed[key] = folder
        scan = _scandir(folder, folder is root)
        if scan is None:
            continue
        with scan:
            for entry in scan:
                try:
                    if entry.is_symlink():
                        try:
                            target = os.stat(entry.path)  # one stat: whether it exists, and what it is
                        except OSError:  # broken, or links that loop among themselves
                            paths.append(entry.path)
                            sizes.append(0)
                            mtimes.append(None)
                            continue
                        mode = target.st_mode
                        if stat.S_ISDIR(mode):
                            if recursive and not skip_folder(entry.name):
                                heapq.heappush(links, (entry.path, (target.st_dev, target.st_ino)))
                            continue
                        paths.append(entry.path)
                        if stat.S_ISREG(mode):
                            sizes.append(target.st_size)
                            mtimes.append(target.st_mtime_ns)
                        else:
                            sizes.append(0)
                            mtimes.append(None)
                    elif entry.is_dir(follow_symlinks=False):
                        if recursive and not skip_folder(entry.name):
                            info = entry.stat(follow_symlinks=False)
                            key = (info.st_dev, info.st_ino)
                            first = listed.get(key)
                            if first is not None:  # a bind mount of a folder above it, say
                                warn(_already_listed(entry.path, first, link=False))
                                continue
                            listed[key] = entry.path
                            folders.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        paths.append(entry.path)
                        sizes.append(info.st_size)
                        mtimes.append(info.st_mtime_ns)
                    else:  # named pipe, socket, device: listed, never opened
                        paths.append(entry.path)
                        sizes.append(0)
                        mtimes.append(None)
                except FileNotFoundError:
                    continue  # deleted while the folder was being listed
                if len(paths) >= _CHUNK_ENTRIES:
                    columns.flush()
                    paths, sizes, mtimes = columns.paths, columns.sizes, columns.mtimes
    return columns.result()


def _already_listed(path: str, first: str, *, link: bool) -> str:
    shown, first_shown = displayed_path(path), displayed_path(first)
    if not link:
        return f"skipped {shown}: it is the same folder as {first_shown}, which is already listed"
    try:
        target = displayed_path(os.readlink(path))
    except OSError:
        target = "?"
    if is_within(first, path):
        return (f"skipped the symbolic link {shown} -> {target}: it leads back to {first_shown}, a folder "
                "above it, and following it would list the same files again without end")
    return (f"skipped the symbolic link {shown} -> {target}: it leads to {first_shown}, which is already "
            "listed (its files would otherwise be enhanced twice)")


def walk_local_files(root: str) -> pa.Array:
    """Paths of every entry under the local folder ``root`` that is not a folder, as a string array.

    For checking what a folder the job writes (OUTPUT) holds: links are not followed (they are
    listed like files), and names that are not UTF-8 are shown with ``\\xNN`` escapes instead
    of failing. Such a name can never equal a path the job writes (always UTF-8), and no file
    has the escaped name. A missing ``root`` gives an empty array; a folder that cannot be read
    raises StorageError.
    """
    chunks: list[pa.Array] = []
    names: list[str] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            scan = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing OUTPUT, or a folder removed meanwhile: nothing there
        except OSError as exc:
            raise storage_error(exc, "list", pafs.LocalFileSystem(), displayed_path(folder)) from exc
        with scan:
            for entry in scan:
                try:
                    is_folder = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_folder = False
                if is_folder:
                    pending.append(entry.path)
                else:
                    names.append(entry.path)
        if len(names) >= _CHUNK_ENTRIES:
            chunks.append(_escaped_strings(names))
            names = []
    if names:
        chunks.append(_escaped_strings(names))
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def _escaped_strings(paths: list[str]) -> pa.Array:
    try:
        return pa.array(paths, pa.string())
    except UnicodeEncodeError:
        return pa.array([displayed_path(p) for p in paths], pa.string())
