"""A local filesystem whose deletes of manifest parts fail, as an object store's can at the end of
a run (root ignores file permissions, and pyarrow's filesystems cannot be subclassed in Python:
this is a PyFileSystem handler that delegates to LocalFileSystem)."""

from __future__ import annotations

import pyarrow.fs as pafs


class NoPartDeletes(pafs.FileSystemHandler):
    """LocalFileSystem, except that deleting a ``part-*.parquet`` file raises OSError."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, NoPartDeletes)

    def __ne__(self, other) -> bool:
        return not self == other

    def __reduce__(self):
        return NoPartDeletes, ()

    def get_type_name(self) -> str:
        return "no-part-deletes"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to empty the root")

    def delete_file(self, path):
        if path.rsplit("/", 1)[-1].startswith("part-"):
            raise OSError(f"injected failure: cannot delete {path}")
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def no_part_deletes() -> pafs.PyFileSystem:
    return pafs.PyFileSystem(NoPartDeletes())
