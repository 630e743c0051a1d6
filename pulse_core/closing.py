"""The ``with`` protocol for objects that have a ``close()``.

This module owns :class:`ClosesOnExit`, the one ``__enter__``/``__exit__``
pair every closeable object of the library shares (the training run, the
framework callbacks, ``track``, the transports' readers and subscribers):
``with thing:`` gives the thing, and leaving the block closes it, after
handing an exception that leaves the block to
:meth:`ClosesOnExit.exited_with` (default: nothing); and
:class:`AsyncClosesOnExit`, the ``async with`` pair of the asyncio subscribers
(leaving the block awaits ``aclose()``). Pure: it imports no I/O module.
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
