"""The hub's token: made by the hub in its home, read there by local clients.

This module owns ``<home>/hub.token``. A hub that listens on TCP or HTTP
needs a token by default (``pulse serve --no-token`` opts out): unless one
is configured (``$PULSE_HUB_TOKEN``, ``[tool.pulse.socket] token``, or
``--token``, which warns: argv is visible in ``ps``), :func:`hub_token`
reuses the token of ``hub.token`` -- so browsers holding its cookie and
clients holding it stay valid across restarts -- or makes a random one. The
token in use, configured ones too, is written there, mode 0600
(:mod:`pulse_transports.homemode`), so local clients always find it. A token file
that users beyond the home's policy could read is replaced by a new token.
Deleting the file rotates the token at the next start.

Clients of that home (:class:`~pulse_transports.subscribe.Subscriber`, the
socket sink over TCP, the tests' HTTP readers) call :func:`client_token`:
``$PULSE_HUB_TOKEN``, else the file. The Unix socket (0600) needs no token.
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

from pulse_core._log import get_logger
from pulse_transports._logfile import replace
from pulse_transports.homemode import file_mode, make_dirs, open_file
from pulse_transports.wire import ENV_TOKEN

log = get_logger("pulse.hub")

#: The token file's name in the home.
TOKEN_FILE: Final = "hub.token"  # noqa: S105 - a file name, not a secret
#: Random bytes in a new token (43 URL-safe characters).
TOKEN_BYTES: Final = 32


def token_path(home: Path | str) -> Path:
    """``<home>/hub.token``."""
    return Path(home) / TOKEN_FILE


def check_token(token: str, *, where: str = "the hub token") -> str:
    """*token* if it can guard a listener: not empty, not blank, no surrounding spaces.

    Raises:
        ValueError: naming what is wrong.
    """
    if not token.strip():
        raise ValueError(f"{where} is empty or only whitespace")
    if token != token.strip():
        raise ValueError(f"{where} starts or ends with whitespace")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in token):
        raise ValueError(f"{where} holds spaces or control characters")
    return token


def read_token(home: Path | str) -> str | None:
    """The token in ``<home>/hub.token``, or None if there is none (or it is unreadable)."""
    try:
        text = token_path(home).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def client_token(home: Path | str | None) -> str | None:
    """The token a local client shows a hub: ``$PULSE_HUB_TOKEN``, else ``<home>/hub.token``."""
    env = os.environ.get(ENV_TOKEN, "").strip()
    if env:
        return env
    return read_token(home if home is not None else ".pulse")


def hub_token(home: Path | str, given: str | None = None) -> str:
    """The token a hub on *home* asks for, written to ``<home>/hub.token``.

    Args:
        home: the hub's home (created if missing).
        given: a configured token; None: reuse the file's, else make one.

    Returns:
        The token.

    Raises:
        ValueError: *given* is blank or holds whitespace.
        OSError: the token file cannot be written.
    """
    path = token_path(home)
    if given is not None:
        token = check_token(given)
    else:
        token = _reusable(path) or secrets.token_urlsafe(TOKEN_BYTES)
    if read_token(home) != token or not _private(path):
        _write(path, token)
    return token


def _private(path: Path) -> bool:
    """Whether *path* is this user's and no one beyond the policy can read it."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o077 & ~file_mode()


def _reusable(path: Path) -> str | None:
    """The token of an existing file no one beyond the policy could read, or None."""
    if not path.exists():
        return None
    token = read_token(path.parent)
    if token is None:
        return None
    if not _private(path):
        log.warning(
            "pulse hub token file was readable by other users; made a new token",
            path=str(path),
        )
        return None
    try:
        return check_token(token)
    except ValueError:
        return None


def _write(path: Path, token: str) -> None:
    """Write *token* to *path* atomically, with the policy's file mode."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    replace(tmp, path)
