"""Who may read a PULSE home: the modes of the folders and files PULSE creates.

This module owns the home's access policy, chosen by ``$PULSE_HOME_MODE``:

* ``private`` (the default): folders ``0700``, files ``0600`` -- only the
  user who runs the training or the hub can read logs, the index, the v1
  snapshot, checkpoints, lock files and the hub token;
* ``group``: folders ``2770`` (setgid: new files keep the folder's group),
  files ``0660`` -- for a team sharing one home through a Unix group.

An unknown value is read as ``private`` (with a warning); ``pulse serve``
refuses it.

The modes are applied with ``chmod``/``fchmod`` after creating, so the
process's umask cannot loosen or tighten them. Folders and files that
already exist are left as they are, except files PULSE opens for writing,
which it owns: those are set to the policy (an old ``0644`` log becomes
``0600``). The policy is read from the environment once per process.
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Final, Literal

from pulse_core._log import get_logger
from pulse_core.errors import ConfigError

log = get_logger("pulse.home")

#: The environment variable naming the policy.
ENV_MODE: Final = "PULSE_HOME_MODE"
#: Folder and file modes of each policy.
MODES: Final = {"private": (0o700, 0o600), "group": (0o2770, 0o660)}

Policy = Literal["private", "group"]


def parse_policy(text: str | None) -> Policy:
    """The policy a ``$PULSE_HOME_MODE`` value names (empty or None: private).

    Raises:
        ConfigError: for another value.
    """
    word = (text or "").strip().lower() or "private"
    if word == "private":
        return "private"
    if word == "group":
        return "group"
    raise ConfigError(f"${ENV_MODE} must be 'private' or 'group', got {text!r}")


@functools.cache
def policy() -> Policy:
    """The home policy of this process: ``$PULSE_HOME_MODE``, default private.

    A value that names no policy is warned about once and read as private
    (the safe side): creating files must not fail training. ``pulse serve``
    refuses it instead.
    """
    try:
        return parse_policy(os.environ.get(ENV_MODE))
    except ConfigError as exc:
        log.warning("pulse home mode unknown; using private", error=str(exc))
        return "private"


def dir_mode() -> int:
    """The mode of the folders PULSE creates (0700 or 2770)."""
    return MODES[policy()][0]


def file_mode() -> int:
    """The mode of the files PULSE creates (0600 or 0660)."""
    return MODES[policy()][1]


def make_dirs(path: Path) -> Path:
    """Create *path* and its missing parents with the policy's mode.

    Folders that exist already keep their mode.

    Returns:
        *path*.

    Raises:
        OSError: a folder cannot be created.
    """
    missing = []
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by another process meanwhile: its mode is its own
        os.chmod(folder, dir_mode())
    return path


def open_file(path: Path | str, flags: int) -> int:
    """``os.open`` with the policy's mode, enforced on a file this user owns.

    Returns:
        The file descriptor.

    Raises:
        OSError: as ``os.open``.
    """
    fd = os.open(path, flags, 0o600)
    set_mode(fd)
    return fd


def set_mode(target: int | Path | str) -> None:
    """Give a file (a descriptor or a path) the policy's mode if this user owns it."""
    with contextlib.suppress(OSError):
        st = os.stat(target)
        if st.st_uid == os.geteuid() and st.st_mode & 0o7777 != file_mode():
            if isinstance(target, int):
                os.fchmod(target, file_mode())
            else:
                os.chmod(target, file_mode())


def others_can_read(path: Path) -> bool:
    """Whether users outside the owner and group can list or enter *path*."""
    try:
        return bool(os.stat(path).st_mode & 0o005)
    except OSError:
        return False
