"""Paths and URIs on local disks and object storage, behind one small API.

* :mod:`.aws`: S3 settings resolved with botocore (:class:`S3Options`), and the S3 filesystem
  that carries them, but no credentials, to every Ray node.
* :mod:`.uris`: URI -> filesystem (:func:`filesystem_for`), folders (:class:`Location`), and
  low-level errors turned into :class:`~dce_batch.errors.StorageError` messages.
* :mod:`.listing`: finding inputs (:func:`list_inputs_table`, :func:`list_inputs`), with
  :mod:`.input_table` (the table it returns), :mod:`.globs` (glob patterns), :mod:`.list_file`
  (list files of image URIs), :mod:`.local_tree` (walking local folders whatever they hold;
  also :func:`walk_local_files`, for OUTPUT) and :mod:`.arrow_paths` (path operations on whole
  columns).
* :mod:`.io`: reading, atomic writing, checking and deleting files.
* :mod:`.s3_errors`: what an S3 failure means (botocore's error codes; pyarrow's wording in one
  table).

Nothing here imports Ray, so all of it is tested with plain pytest.
"""

from dce_batch.storage.aws import PortableS3FileSystem, S3Options
from dce_batch.storage.input_table import INPUT_TABLE_SCHEMA, InputFile
from dce_batch.storage.io import (
    TEMP_NAME_PATTERN,
    delete_tree_contents,
    exists,
    list_files,
    read_bytes,
    remove_files,
    temp_tag,
    write_bytes_atomic,
    writes_via_temp_files,
)
from dce_batch.storage.list_file import LIST_FILE_SUFFIXES
from dce_batch.storage.listing import MANIFEST_DIR, input_info, list_inputs, list_inputs_table
from dce_batch.storage.local_tree import walk_local_files
from dce_batch.storage.uris import Location, filesystem_for

__all__ = [
    "INPUT_TABLE_SCHEMA",
    "LIST_FILE_SUFFIXES",
    "MANIFEST_DIR",
    "InputFile",
    "Location",
    "PortableS3FileSystem",
    "S3Options",
    "TEMP_NAME_PATTERN",
    "delete_tree_contents",
    "exists",
    "filesystem_for",
    "input_info",
    "list_files",
    "list_inputs",
    "list_inputs_table",
    "read_bytes",
    "remove_files",
    "temp_tag",
    "walk_local_files",
    "write_bytes_atomic",
    "writes_via_temp_files",
]
