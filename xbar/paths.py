"""Output paths checked before any work: a run that trains for an hour must not fail at the save.

Every command that writes (`train --out`, `prune --out`, `sweep --out`, `report --out`) calls
:func:`check_output_path` first, so a read-only place, a folder where a file is expected (or the
reverse) or a missing parent folder is one clear ConfigError before anything is computed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError

KINDS = ("file", "folder")


def check_output_path(path: str | os.PathLike, what: str = "--out", *, kind: str = "file",
                      create_parents: bool = False) -> Path:
    """Refuse an output path that cannot be written; returns it as a Path. Creates nothing.

    what: how the user named it, for the message (e.g. "--out", "train: out").
    kind: "file" (a checkpoint or store, replaced if it exists) or "folder" (a report folder,
        created if missing; existing files in it are the writer's business).
    create_parents: the writer creates missing parent folders (else a missing parent is refused).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not str(path).strip():
        raise ConfigError(f"{what}: empty path; give a {kind} name")
    p = Path(path).expanduser()
    if kind == "file":
        if p.is_dir():
            raise ConfigError(f"{what} {p}: is a folder; give a file name, e.g. {p / 'run.h5'}")
        if p.exists() and not os.access(p, os.W_OK):
            raise ConfigError(f"{what} {p}: the file exists and is not writable")
        folder = p.parent
    else:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{what} {p}: is a file; give a folder name")
        folder = p if p.is_dir() else p.parent
    # The nearest folder that exists is where the first write (or mkdir) happens.
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != folder and not create_parents:
        raise ConfigError(f"{what} {p}: folder {folder} does not exist; create it first "
                          f"(mkdir -p {folder})")
    if not existing.is_dir():
        raise ConfigError(f"{what} {p}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".xbar-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{what} {p}: cannot write in {existing} ({exc.strerror or exc})") from None
    return p
