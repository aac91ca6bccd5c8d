"""The files kept beside a SQLite store (``<store>.consent-seq``, ``.write-lock``,
``.sessions``, ``.exports``, ``.outbox``): named after the file SQLite opens, owned like it.

*Named after the real file.* SQLite opens a database through symbolic links, so a process
given ``/srv/link.db`` and one given its target ``/srv/data/c.db`` share one database. A file
named from the path as given would be two files: the consent announcements of one process
unseen by the other (a revocation appended through the link, never enforced by a process
that maps the target's counter), two write turns, two session boards. :func:`beside` names
each from :func:`os.path.realpath` of the store's path, which SQLite's own ``-wal`` and
``-shm`` files follow too (``unixFullPathname`` in SQLite's ``os_unix.c`` resolves links).

*Owned like the database.* A file created by a process running as root (a ``consentry``
command run by an operator) would be root's, mode 0600, and the gateway's user could not
open it afterwards. SQLite gives its ``-wal`` and ``-shm`` files the database's owner in that
case (``robustFchown`` in ``os_unix.c``); :func:`open_beside` does the same for the files
created here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["beside", "open_beside"]


def beside(database: Path | str, suffix: str) -> Path:
    """The path of the ``suffix`` file (``".consent-seq"``) beside the SQLite file that
    ``database`` names, symbolic links resolved (a missing file's path resolved as far as
    it exists, as SQLite would create it)."""
    return Path(os.path.realpath(database) + suffix)


def open_beside(path: Path, database: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open(path, flags | O_CREAT, mode)``; a file this call created while running as
    root is given the owner and group of ``database`` (when it exists). Raises ``OSError``."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, flags | os.O_CREAT, mode)
    if os.geteuid() == 0:
        try:
            owner = os.stat(database)
        except FileNotFoundError:
            return fd
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        except BaseException:
            os.close(fd)
            raise
    return fd
