"""The ``with`` protocol for objects that have a ``close()``.

This module owns :class:`ClosesOnExit`, the one ``__enter__``/``__exit__``
pair every closeable object of the library shares (the training run, the
framework callbacks, ``track``, the transports' readers and subscribers):
``with thing:`` gives the thing, and leaving the block closes it, after
handing an exception that leaves the block to
:meth:`ClosesOnExit.exited_with` (default: nothing); :class:`EndsOnExit`,
what a run and a peer rank's stand-in share (an exception leaving the block
ends the run); and :class:`AsyncClosesOnExit`, the ``async with`` pair of the
asyncio subscribers (leaving the block awaits ``aclose()``). Pure: it imports
no I/O module.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self


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

    if TYPE_CHECKING:  # the class it is mixed into defines fail_with()

        def fail_with(self, exc: BaseException) -> None: ...

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
