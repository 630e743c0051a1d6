"""The ``with`` protocol for objects that have a ``close()``.

This module owns :class:`ClosesOnExit`, the one ``__enter__``/``__exit__``
pair every closeable object of the library shares (the training run, the
framework callbacks, ``track``, the transports' readers and subscribers):
``with thing:`` gives the thing, and leaving the block closes it, after
handing an exception that leaves the block to
:meth:`ClosesOnExit.exited_with` (default: nothing); :class:`EndsOnExit`,
what a run and a peer rank's stand-in share (``error()``; an exception leaving
the block ends the run); and :class:`AsyncClosesOnExit`, the ``async with`` pair of the
asyncio subscribers (leaving the block awaits ``aclose()``). Pure: it imports
no I/O module.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self


class ClosesOnExit:
    """Mixin: ``with x:`` yields *x* and calls ``x.close()`` on the way out."""

    if TYPE_CHECKING:  # the class it is mixed into defines close()

        def close(self) -> None: ...

    def exited_with(self, exc: BaseException) -> None:
        """Called with the exception leaving the ``with`` block, before close()."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.exited_with(exc)
        finally:
            self.close()


class EndsOnExit(ClosesOnExit):
    """Mixin of a run: an exception leaving ``with`` ends it through ``fail_with()``.

    Shared by :class:`~pulse_core.emitter.TrainingRun` and the stand-in run of
    a rank other than 0, which keep their state in ``_status`` and ``_closed``.
    """

    _status: str
    _closed: bool

    if TYPE_CHECKING:  # the class it is mixed into defines fail_with() and _report_error()

        def fail_with(self, exc: BaseException) -> None: ...

        def _report_error(
            self, error_code: str, message: str, is_retryable: bool, details: Any, fatal: bool
        ) -> None: ...

    def error(
        self,
        error_code: str,
        message: str,
        is_retryable: bool = False,
        details: Mapping[str, Any] | None = None,
        *,
        fatal: bool = True,
    ) -> None:
        """Report an error; by default it also ends the run with status ``error``.

        A training run sends it to its sinks; a rank other than 0 writes it to
        its rank error file for rank 0 to fold in.

        Args:
            error_code: an UPPER_SNAKE code, e.g. ``DATASET_NOT_FOUND``
                (anything else is replaced by ``UNHANDLED_EXCEPTION``, with
                the given code kept in details).
            message: a short sentence for people.
            is_retryable: whether a UI should offer "try again".
            details: JSON-ready context (trace id, paths, ...); other values
                are turned into strings.
            fatal: False to record the error and keep the run going.

        Raises:
            IllegalTransition: in strict mode, if the run already ended.
        """
        self._report_error(error_code, message, is_retryable, details, fatal)

    def exited_with(self, exc: BaseException) -> None:
        """An exception left the ``with`` block: the run ends by it (see fail_with)."""
        self.fail_with(exc)

    @property
    def current_status(self) -> str:
        """The run's lifecycle state as this process last set it."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed


class AsyncClosesOnExit:
    """Mixin: ``async with x:`` yields *x* and awaits ``x.aclose()`` on the way out."""

    if TYPE_CHECKING:  # the class it is mixed into defines aclose()

        async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
