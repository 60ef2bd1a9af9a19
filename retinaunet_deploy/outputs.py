"""Output locations: check a folder can be written before a stage's work, and turn an OS
error met writing into one line naming the path and the OS reason (`errors.OutputError`).

Both are re-exported by `artifacts` (``artifacts.check_writable``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from retinaunet_deploy.errors import OutputError


def output_error(path: Path, error: OSError, remedy: str | None = None):
    """An `errors.OutputError` for an OS error met writing `path`: one line naming the path
    and the OS reason ("<path>: cannot write (<reason>); <remedy>"). An `OutputError`
    given is returned as it is."""
    if isinstance(error, OutputError):
        return error
    reason = error.strerror or str(error)
    where = Path(path)
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        # A file where a folder is expected: name it (the path itself or a parent).
        failed = Path(error.filename) if getattr(error, "filename", None) else where
        blocking = next((p for p in (failed, *failed.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            reason = f"{blocking} is a file, not a folder"
    if remedy is None:
        remedy = ("free space on that disk or choose another output folder" if
                  error.errno in (errno.ENOSPC, errno.EDQUOT) else
                  "choose a folder you can write to, or make this one writable")
    return OutputError(f"{where}: cannot write ({reason}); {remedy}")


def check_writable(folder: Path) -> None:
    """Create `folder` (and its parents), write and remove a small probe file in it, and
    remove again the folders this call created.

    Every stage calls this before its work, so an output folder that cannot be
    written fails in seconds, not after the work; a stage refused afterwards (bad data,
    bad options) leaves no empty folder behind. Stages write through
    `artifacts.atomic_path`, which creates the folder of the file it writes.

    Raises:
        OutputError: the folder cannot be created or written (read-only, no
            permission, a file in its place, a full disk), naming it and the OS reason.
    """
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(errno.EEXIST, "File exists", str(folder))
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        try:
            os.write(fd, b"retinaunet-deploy write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
            for made in created:      # deepest first
                made.rmdir()
    except OSError as error:
        raise output_error(folder, error) from error
