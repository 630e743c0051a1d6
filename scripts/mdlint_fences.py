"""A PyMarkdown rule (plugin): every fenced code block is closed by a bare fence.

Loaded by ``.ci/run`` as ``pymarkdown --add-plugin scripts/mdlint_fences.py``.
A fence closed with text after it (```` ``` `--quick` runs ````) is no closing
fence in CommonMark: the block runs on to the end of the page and the page
renders as one run of text; ``mkdocs build --strict`` does not notice.
PyMarkdown ends such a block with a *forced* end token, which this rule reports
(id ``PLS001``, at the block's opening fence).
"""

from __future__ import annotations

from typing import Any

from pymarkdown.plugin_manager.plugin_details import PluginDetails
from pymarkdown.plugin_manager.rule_plugin import RulePlugin


class MdlintFences(RulePlugin):  # type: ignore[misc]  # pymarkdown ships no type hints
    """Report fenced code blocks that reach the end of their container unclosed."""

    def __init__(self) -> None:
        super().__init__()
        self._open: list[Any] = []

    def get_details(self) -> PluginDetails:
        """Name, id and description of the rule."""
        return PluginDetails(
            plugin_name="fence-closed",
            plugin_id="PLS001",
            plugin_enabled_by_default=True,
            plugin_description="Fenced code block is never closed (a closing fence with text?)",
            plugin_version="0.1.0",
            plugin_interface_version=1,
        )

    def starting_new_file(self) -> None:
        """Forget the blocks of the previous file."""
        self._open = []

    def next_token(self, context: Any, token: Any) -> None:
        """Track fenced blocks; report one whose end was forced."""
        if token.is_fenced_code_block:
            self._open.append(token)
        elif token.is_fenced_code_block_end:
            start = self._open.pop() if self._open else token
            if getattr(token, "was_forced", False):
                self.report_next_token_error(context, start)
