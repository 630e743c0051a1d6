"""MkDocs hook: the generated parts of the PULSE documentation.

This module owns everything in the docs that is derived from code or from
``specs/`` at build time, so none of it can drift:

* published copies of ``specs/protocol.md``, ``specs/hub-protocol.md``, the
  JSON Schemas, the conformance vectors and their generator, added to the
  site as generated files (``on_files``) -- never copied by hand;
* markers in hand-written pages, replaced when the page is rendered
  (``on_page_markdown``)::

      <!-- pulse:lifecycle-diagram -->   mermaid diagram from build_machine()
      <!-- pulse:lifecycle-table -->     the transition table (lifecycle.TABLE)
      <!-- pulse:error-codes -->         WELL_KNOWN_ERROR_CODES
      <!-- pulse:limits -->              rate limits, liveness and size defaults
      <!-- pulse:config-keys -->         pulse_transports.config.KEYS
      <!-- pulse:transport-options -->   every installed transport's OPTIONS
      <!-- pulse:environment -->         every PULSE_* environment variable
      <!-- pulse:cli-reference -->       the whole ``pulse`` command tree
      <!-- pulse:exit-codes -->          the CLI's exit codes
      <!-- pulse:example-log -->         the first lines of a conformance vector
      <!-- pulse:sink-intervals -->      every transport's default rate limit
      <!-- pulse:line-sizes -->          bytes per log line, measured with the encoder
      <!-- pulse:state-bounds -->        the limits of a folded RunState
      <!-- pulse:v1-status-words -->     the v1 status words the bridge understands
      <!-- pulse:truth-matrix -->        scenario x reader, from tests/truth/matrix.py

An unknown marker, or a generator that fails, stops the build.

Registered in ``mkdocs.yml`` under ``hooks:``; excluded from the site by
``exclude_docs``. It imports the installed ``pulse_core`` and
``pulse_transports`` and never writes into ``docs/``.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
#: The truth matrix's table: the test's own data, the docs' table.
TRUTH_MATRIX = ROOT / "tests" / "truth" / "matrix.py"
MARKER = re.compile(r"<!-- pulse:([a-z0-9-]+) -->")

#: Published spec files: source under specs/ -> place in the site.
SPEC_PAGES = {
    "protocol.md": "protocol/protocol.md",
    "hub-protocol.md": "protocol/hub-protocol.md",
    "sse.md": "protocol/sse.md",
    "nats.md": "protocol/nats.md",
}
#: Links in the spec that point at folders; the site has index pages there.
FOLDER_LINKS = {"](vectors/)": "](vectors/index.md)", "](schema/)": "](schema/index.md)"}

#: What the environment variables that are not configuration keys do.
ENV_HELP = {
    "PULSE_TRAINING_ID": "The run's training id (set by `pulse run` and the Flow Manager "
    "for the child process; default: a new time-ordered id).",
    "PULSE_FLOW_ID": "The flow that started the run (flow link of the run's `meta`).",
    "PULSE_FLOW_RUN_ID": "The flow run that started the run.",
    "PULSE_FLOW_STEP_ID": "The TRAIN step of that flow run.",
    "PULSE_ATTEMPT": "Which attempt of the step this run is (1 = first).",
    "PULSE_TOTAL_EPOCHS": "Planned epochs, when `TrainingRun(total_epochs=...)` is not given.",
    "PULSE_HANDLE_SIGNALS": "`1`: a TrainingRun ends `cancelled` on SIGTERM/SIGINT "
    "(set for supervised children).",
    "PULSE_SUPERVISED": "Set to `1` by the supervisor (`pulse run`, Flow steps) in the "
    "child's environment: it already wrote `preparing` and `running`, so a TrainingRun "
    "continuing its log starts from `running`.",
    "PULSE_TRANSPORT_OPTIONS": "Per-transport option tables as a JSON object, merged over "
    'the tables of the configuration file, e.g. `{"file": {"interval": 0.25}}` (the '
    "supervisor sets the child's `file` `lock_wait` and `interval` this way).",
    "PULSE_FOLLOW_POLLING": "`1`: readers poll log folders instead of using OS file notifications.",
    "PULSE_HUB_TOKEN": "The hub's shared secret (the `socket` sink, `pulse serve`).",
    "PULSE_HUB_SOCKET": "The hub's Unix socket (default `<home>/pulse.sock`).",
}

#: What each CLI exit code means (the names are pulse_transports.cli._common's).
EXIT_HELP = {
    "EXIT_OK": "success",
    "EXIT_FAILED": "the thing asked for ran and failed (a run that ended badly, "
    "`validate` found errors, the bridge is already running)",
    "EXIT_USAGE": "bad arguments or configuration",
    "EXIT_NOT_FOUND": "unknown training id, missing home, nothing to read",
    "EXIT_UNREADABLE": "a file that is not a readable PULSE log",
    "EXIT_LAUNCH_FAILED": "`pulse run`: the command could not be started (as a shell says)",
}


def _fail(what: str, exc: BaseException) -> PluginError:
    return PluginError(f"pulse docs: cannot generate {what}: {type(exc).__name__}: {exc}")


# -- files ---------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the published copies of specs/ to the site."""
    for source, target in SPEC_PAGES.items():
        text = (SPECS / source).read_text("utf-8")
        for old, new in FOLDER_LINKS.items():
            text = text.replace(old, new)
        note = f"<!-- Published from specs/{source} by docs/gen_pages.py; edit that file. -->\n\n"
        files.append(File.generated(config, target, content=note + text))
    schemas = sorted((SPECS / "schema").glob("*.json"))
    for path in schemas:
        files.append(
            File.generated(config, f"protocol/schema/{path.name}", content=path.read_bytes())
        )
    files.append(File.generated(config, "protocol/schema/index.md", content=_schema_page(schemas)))
    vectors = sorted((SPECS / "vectors").iterdir())
    for path in vectors:
        files.append(
            File.generated(config, f"protocol/vectors/{path.name}", content=path.read_bytes())
        )
    files.append(File.generated(config, "protocol/vectors/index.md", content=_vectors_page()))
    for name in ("generate.py", "corpus.py", "corpus/differential.jsonl"):
        content = (SPECS / name).read_bytes()
        files.append(File.generated(config, f"protocol/{name}", content=content))
    return files


def _schema_page(schemas: list[Path]) -> str:
    out = [
        "# JSON Schemas",
        "",
        "Published from `specs/schema/` at build time. The decoding rules of the",
        "[wire protocol](../protocol.md#readers) are the authority; the schemas say what a",
        "conforming writer emits (see [JSON Schemas](../protocol.md#json-schemas)).",
        "",
    ]
    for path in schemas:
        data = json.loads(path.read_text("utf-8"))
        out += [
            f"## {path.name}",
            "",
            f"`$id`: `{data.get('$id', '-')}` · [download]({path.name})",
            "",
            html.escape(str(data.get("description", data.get("title", "")))),
            "",
            "```json",
            json.dumps(data, indent=2),
            "```",
            "",
        ]
    return "\n".join(out)


def _vectors_page() -> str:
    out = [
        "# Conformance vectors",
        "",
        "Published from `specs/vectors/` at build time; generated there by",
        "[`generate.py`](../generate.py) with the reference implementation. How to run them",
        "against another implementation: [Conformance](../index.md#checking-an-implementation).",
        "",
        "| vector | what it exercises | lines | rejected | log | expected |",
        "|---|---|---|---|---|---|",
    ]
    for expected in sorted((SPECS / "vectors").glob("*.expected.json")):
        name = expected.name.removesuffix(".expected.json")
        data = json.loads(expected.read_text("utf-8"))
        log = SPECS / "vectors" / f"{name}.jsonl"
        lines = len(log.read_bytes().split(b"\n")) - (1 if log.read_bytes().endswith(b"\n") else 0)
        description = html.escape(str(data.get("description", ""))).replace("|", "\\|")
        out.append(
            f"| `{name}` | {description} | {lines} | {len(data.get('rejected_lines', []))} "
            f"| [{name}.jsonl]({name}.jsonl) | [{name}.expected.json]({name}.expected.json) |"
        )
    return "\n".join(out) + "\n"


# -- markers ---------------------------------------------------------------------------


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace every ``<!-- pulse:NAME -->`` marker with its generated Markdown."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        generator = GENERATORS.get(name)
        if generator is None:
            raise PluginError(
                f"pulse docs: unknown marker {match.group(0)} in {page.file.src_uri}; "
                f"known: {', '.join(sorted(GENERATORS))}"
            )
        try:
            return generator()
        except PluginError:
            raise
        except Exception as exc:
            raise _fail(name, exc) from exc

    return MARKER.sub(replace, markdown)


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _inline(text: object, pipes: bool = False) -> str:
    """Docstring or help text as one line of Markdown.

    reST roles and double backticks become code spans; outside code spans ``<``,
    ``>`` and ``&`` are escaped (so ``<home>`` is text, not a tag), and with
    *pipes* also ``|`` (for table cells; tables leave pipes in code spans alone).
    """
    flat = " ".join(str(text).split()).replace("``", "`")
    flat = _ROLE.sub(lambda m: f"`{m.group(1).split('.')[-1]}`", flat)
    parts = flat.split("`")
    for index in range(0, len(parts), 2):  # even parts are outside code spans
        parts[index] = html.escape(parts[index], quote=False)
        if pipes:
            parts[index] = parts[index].replace("|", "\\|")
    return "`".join(parts)


def _cell(text: object) -> str:
    """Like :func:`_inline`, for a Markdown table cell."""
    return _inline(text, pipes=True)


def _code(text: object) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def lifecycle_diagram() -> str:
    """A mermaid state diagram built from the transitions machine itself."""
    from pulse_core.events import TERMINAL_STATUSES
    from pulse_core.lifecycle import INITIAL, build_machine

    machine = build_machine()
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {INITIAL}"]
    for state in machine.states:
        for trigger, event in machine.events.items():
            for transition in event.transitions.get(state, []):
                dest = transition.dest if transition.dest is not None else state
                lines.append(f"    {state} --> {dest}: {trigger}")
    lines += [f"    {state} --> [*]" for state in machine.states if state in TERMINAL_STATUSES]
    lines.append("```")
    return "\n".join(lines)


def lifecycle_table() -> str:
    """The ``(state, trigger) -> state`` table the reducer uses."""
    from pulse_core.events import STATUSES
    from pulse_core.lifecycle import TABLE

    out = ["| from | trigger | to |", "|---|---|---|"]
    order = {s: i for i, s in enumerate(STATUSES)}
    for (source, trigger), dest in sorted(
        TABLE.items(), key=lambda item: (order[item[0][0]], order[item[1]], item[0][1])
    ):
        out.append(f"| `{source}` | {trigger} | `{dest}` |")
    return "\n".join(out)


def error_codes() -> str:
    """The well-known error codes."""
    from pulse_core.events import WELL_KNOWN_ERROR_CODES

    out = ["| error_code | meaning |", "|---|---|"]
    out += [f"| `{code}` | {_cell(text)} |" for code, text in WELL_KNOWN_ERROR_CODES.items()]
    return "\n".join(out)


def limits() -> str:
    """The numbers that bound load and decide liveness, read from the code."""
    from pulse_core import liveness, policy
    from pulse_transports import file

    rows = [
        (
            "live sinks (v1 file, socket, UI)",
            "pulse_core.policy.LIVE_INTERVAL",
            f"{policy.LIVE_INTERVAL} s between forwarded progress/metrics",
        ),
        (
            "durable log",
            "pulse_core.policy.LOG_INTERVAL",
            f"{policy.LOG_INTERVAL} s, plus the last values of every epoch",
        ),
        (
            "heartbeat",
            "pulse_core.policy.HEARTBEAT_INTERVAL",
            f"{policy.HEARTBEAT_INTERVAL} s of silence",
        ),
        ("stale after", "pulse_core.liveness.STALE_AFTER", f"{liveness.STALE_AFTER} s of silence"),
        ("lost after", "pulse_core.liveness.LOST_AFTER", f"{liveness.LOST_AFTER} s of silence"),
        (
            "failing sink buffer",
            "pulse_core.policy.BUFFER_EVENTS",
            f"{policy.BUFFER_EVENTS} events",
        ),
        (
            "retry delay",
            "pulse_core.policy.RETRY_FIRST / RETRY_MAX",
            f"{policy.RETRY_FIRST} s, doubling, at most {policy.RETRY_MAX} s",
        ),
        (
            "log size cap per run",
            "pulse_transports.file.DEFAULT_MAX_BYTES",
            f"{file.DEFAULT_MAX_BYTES} bytes ({file.DEFAULT_MAX_BYTES // (1024 * 1024)} MiB)",
        ),
    ]
    out = ["| what | constant | default |", "|---|---|---|"]
    out += [f"| {what} | `{name}` | {value} |" for what, name, value in rows]
    return "\n".join(out)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def config_keys() -> str:
    """Every configuration key: TOML name, environment variable, default, meaning."""
    from pulse_transports.config import KEYS

    out = ["| key | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
    for key in KEYS:
        kind = "list of names" if key.kind is tuple else key.kind.__name__
        env = _code(key.env) if key.env else "-"
        out.append(
            f"| `{key.name}` | {env} | {kind} | `{_toml(key.default)}` | {_cell(key.help)} |"
        )
    return "\n".join(out)


def _arg_docs(obj: Any) -> dict[str, str]:
    """Google-style ``Args:`` entries of a docstring (``a, b: text`` documents both)."""
    doc = inspect.getdoc(obj) or ""
    found: dict[str, str] = {}
    section = False
    current: list[str] = []
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            section = True
            continue
        if section and line and not line.startswith(" "):
            break  # the next section
        if not section:
            continue
        match = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if match:
            current = [n.strip() for n in match.group(1).split(",")]
            for name in current:
                found[name] = match.group(2)
        elif line.startswith("        ") and current:
            for name in current:
                found[name] += " " + line.strip()
    return found


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty
    }


#: Transports whose optional dependencies are not installed -> why (docs build anyway).
_NOT_LOADED: dict[str, str] = {}


def _factory(name: str) -> Any:
    """A transport's factory, or ``None`` (and a note) when its extra is not installed.

    The docs build with the ``docs`` extra alone: a transport that needs another
    extra (``nats`` needs nats-py) is listed with the reason instead of failing.
    """
    from pulse_core.errors import PulseError
    from pulse_transports.registry import load_factory

    try:
        return load_factory(name)
    except (PulseError, ImportError) as exc:
        _NOT_LOADED[name] = f"Not installed where these docs were built: {exc}"
        return None


def transport_options() -> str:
    """Every installed transport (``pulse.transports`` entry points) and its options."""
    from pulse_transports.registry import available

    out: list[str] = []
    for name, value in sorted(available().items()):
        factory = _factory(name)
        if factory is None:
            out += [f"### `{name}`", "", f"Entry point `{value}`. {_cell(_NOT_LOADED[name])}", ""]
            continue
        declared: dict[str, type] = dict(getattr(factory, "OPTIONS", None) or {})
        summary = (inspect.getdoc(factory) or "").split("\n\n")[0]
        out += [
            f"### `{name}`",
            "",
            f"Entry point `{value}`. {_cell(summary)}",
            "",
        ]
        if not declared:
            out += ["No options.", ""]
            continue
        docs = _arg_docs(factory)
        defaults = _defaults(factory)
        out += [f"| `[{name}]` option | type | default | meaning |", "|---|---|---|---|"]
        for option, kind in declared.items():
            default = defaults.get(option, inspect.Parameter.empty)
            shown = (
                "-"
                if default is inspect.Parameter.empty or default is None
                else _code(_toml(default))
            )
            out.append(
                f"| `{option}` | {kind.__name__} | {shown} | {_cell(docs.get(option, ''))} |"
            )
        out.append("")
        if name == "socket":
            out += _hub_table()
    return "\n".join(out)


def _hub_table() -> list[str]:
    from pulse_transports.cli.serve import HUB_KEYS
    from pulse_transports.hub import HubSettings

    defaults = _defaults(HubSettings)
    docs = _arg_docs(HubSettings) or _attribute_docs(HubSettings)
    out = [
        "The `[socket.hub]` sub-table holds settings of `pulse serve` (the hub), so both ends",
        "of the socket share `path` and `token`; command-line options win over it.",
        "",
        "| `[socket.hub]` key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, kind in HUB_KEYS.items():
        default = defaults.get(key, None)
        shown = "-" if default is None else _code(_toml(default))
        out.append(f"| `{key}` | {kind.__name__} | {shown} | {_cell(docs.get(key, ''))} |")
    out.append("")
    return out


def _attribute_docs(obj: Any) -> dict[str, str]:
    """``Attributes:`` entries of a docstring, like :func:`_arg_docs`."""
    doc = (inspect.getdoc(obj) or "").replace("Attributes:", "Args:")

    class _Doc:
        __doc__ = doc

    return _arg_docs(_Doc)


def _env_from_modules() -> dict[str, str]:
    """``ENV_*`` constants of the modules that read the environment -> module name."""
    found: dict[str, str] = {}
    for module_name in (
        "pulse_core.emitter",
        "pulse_transports.notify",
        "pulse_transports.wire",
        "pulse_transports.supervise",
        "pulse_transports.nats",
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr, value in vars(module).items():
            if attr.startswith("ENV_") and isinstance(value, str) and value.startswith("PULSE_"):
                found.setdefault(value, module_name)
    return found


def _env_from_cli() -> dict[str, str]:
    """Environment variables the CLI options read (click ``envvar``) -> ``pulse CMD --opt``."""
    found: dict[str, str] = {}
    for path, command in _commands():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names = [envvar] if isinstance(envvar, str) else list(envvar or [])
            for name in names:
                found.setdefault(name, f"`{path} {param.opts[0]}`")
    return found


def environment() -> str:
    """Every PULSE_* environment variable: configuration keys, process settings, CLI."""
    from pulse_transports.config import KEYS

    out = ["| variable | used by | meaning |", "|---|---|---|"]
    seen: set[str] = set()
    for key in KEYS:
        if key.env:
            seen.add(key.env)
            out.append(f"| `{key.env}` | configuration key `{key.name}` | {_cell(key.help)} |")
    modules = _env_from_modules()
    cli = _env_from_cli()
    extra = sorted((set(modules) | set(cli) | set(ENV_HELP)) - seen)
    for name in extra:
        users = []
        if name in modules:
            users.append(f"`{modules[name]}`")
        if name in cli:
            users.append(cli[name])
        meaning = ENV_HELP.get(name, f"Read by {', '.join(users)}.")
        out.append(f"| `{name}` | {', '.join(users) or '-'} | {_cell(meaning)} |")
    return "\n".join(out)


# -- the command line ---------------------------------------------------------------


def _root() -> click.Group:
    from pulse_transports.cli import main

    return main


def _commands() -> Iterable[tuple[str, click.Command]]:
    """Every ``pulse`` command, lazily registered ones loaded, with its full name."""
    root = _root()
    ctx = click.Context(root, info_name="pulse")

    def walk(
        group: click.Group, prefix: str, context: click.Context
    ) -> Iterable[tuple[str, click.Command]]:
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            if command is None:
                raise PluginError(f"pulse docs: command {prefix} {name} cannot be loaded")
            path = f"{prefix} {name}"
            yield path, command
            if isinstance(command, click.Group):
                yield from walk(
                    command, path, click.Context(command, parent=context, info_name=name)
                )

    return list(walk(root, "pulse", ctx))


def _help_markdown(text: str) -> str:
    """A click help text as Markdown: ``\\b`` paragraphs become code blocks."""
    out: list[str] = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b"):
            body = paragraph.split("\n", 1)[1] if "\n" in paragraph else ""
            lines = body.splitlines()
            title = lines[0].strip() if lines and lines[0].rstrip().endswith(":") else None
            if title is not None:
                out.append(f"**{html.escape(title)}**")
                lines = lines[1:]
            out.append("```text\n" + inspect.cleandoc("\n".join(lines)) + "\n```")
        else:
            out.append(_inline(paragraph))
    return "\n\n".join(out)


def _metavar(param: click.Parameter, context: click.Context) -> str:
    try:
        return str(param.make_metavar(context))  # click >= 8.2
    except TypeError:
        return str(param.make_metavar())  # type: ignore[call-arg]  # click 8.1


def _param_rows(command: click.Command, context: click.Context) -> list[str]:
    rows = []
    for param in command.params:
        if isinstance(param, click.Argument):
            continue
        assert isinstance(param, click.Option)
        names = " / ".join(", ".join(part) for part in (param.opts, param.secondary_opts) if part)
        kind = "flag" if param.is_flag and not param.secondary_opts else _metavar(param, context)
        try:
            default = param.get_default(context, call=False)
        except TypeError:
            default = param.default
        shown = "-"
        if param.multiple:
            kind += " (repeatable)"
        elif default is not None and default is not False and not callable(default):
            shown = _code(default if not isinstance(default, bool) else str(default).lower())
        help_text = param.help or ""
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str) and envvar not in help_text:
            help_text += f" Environment: {envvar}."
        rows.append(f"| `{names}` | {_cell(kind)} | {shown} | {_cell(help_text)} |")
    return rows


def cli_reference() -> str:
    """The whole command tree: usage, description, arguments and options of each command."""
    root = _root()
    root_ctx = click.Context(root, info_name="pulse")
    out = [
        "## `pulse`",
        "",
        "```text",
        " ".join(["pulse", *root.collect_usage_pieces(root_ctx)]),
        "```",
        "",
        _help_markdown(root.help or ""),
        "",
        "| option | value | default | meaning |",
        "|---|---|---|---|",
        *_param_rows(root, root_ctx),
        "",
    ]
    for path, command in _commands():
        ctx = click.Context(command, info_name=path.split()[-1], parent=root_ctx)
        usage = " ".join([path, *command.collect_usage_pieces(ctx)])
        out += [
            f"## `{path}`",
            "",
            "```text",
            usage,
            "```",
            "",
            _help_markdown(command.help or ""),
            "",
        ]
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if arguments:
            out += ["| argument | required | repeatable |", "|---|---|---|"]
            for arg in arguments:
                out.append(
                    f"| `{_metavar(arg, ctx)}` "
                    f"| {'yes' if arg.required else 'no'} | {'yes' if arg.nargs == -1 else 'no'} |"
                )
            out.append("")
        rows = _param_rows(command, ctx)
        if rows:
            out += ["| option | value | default | meaning |", "|---|---|---|---|", *rows, ""]
        out += _json_shape(command)
    return "\n".join(out)


def _json_shape(command: click.Command) -> list[str]:
    """The ``--json`` output of *command*, from its module doc's literal (``::``) block."""
    if not any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
        return []
    module = sys.modules.get(getattr(command.callback, "__module__", "") or "")
    doc = (inspect.getdoc(module) or "") if module is not None else ""
    match = re.search(r"((?:[^\n]+\n)*[^\n]*)::\n\n((?:(?:    [^\n]*)?\n)+)", doc + "\n")
    out = ["**JSON output** (`--json`)", ""]
    if match is None:
        out += [
            "One JSON object, the same facts as the human output under the same names "
            "(see the command's help).",
            "",
        ]
        return out
    intro = " ".join(match.group(1).split())
    body = "\n".join(line[4:] for line in match.group(2).rstrip().splitlines())
    return [*out, _help_markdown(intro + ":"), "", "```text", body, "```", ""]


def exit_codes() -> str:
    """The exit codes of the commands: the shared ones and any a command adds."""
    _commands()  # load every command module
    found: dict[str, int] = {}
    for module_name, module in sorted(sys.modules.items()):
        if module_name.startswith("pulse_transports.cli"):
            for name, value in vars(module).items():
                if name.startswith("EXIT_") and isinstance(value, int):
                    found.setdefault(name, value)
    codes = sorted((value, name) for name, value in found.items())
    out = ["| code | name | meaning |", "|---|---|---|"]
    for value, name in codes:
        out.append(f"| {value} | `{name}` | {_cell(EXIT_HELP.get(name, name.lower()))} |")
    return "\n".join(out)


def example_log() -> str:
    """The first lines of the ``happy_run`` conformance vector."""
    lines = (SPECS / "vectors" / "happy_run.jsonl").read_text("utf-8").splitlines()
    return "```json\n" + "\n".join(lines[:9]) + "\n```"


def sink_intervals() -> str:
    """Every installed transport's default rate limit and whether it keeps epoch boundaries."""
    from pulse_transports.registry import available

    out = [
        "| transport | default `interval` (s) | gets every epoch's last values |",
        "|---|---|---|",
    ]
    for name in sorted(available()):
        factory = _factory(name)
        if factory is None:
            out.append(f"| `{name}` | (not installed here) | - |")
            continue
        interval = _defaults(factory).get("interval", getattr(factory, "interval", "-"))
        boundaries = "yes" if getattr(factory, "boundaries", False) else "no"
        out.append(f"| `{name}` | {interval} | {boundaries} |")
    return "\n".join(out)


def line_sizes() -> str:
    """Bytes per log line of typical events, measured with the real encoder."""
    from pulse_core.codec import encode
    from pulse_core.events import Heartbeat, Metrics, Progress, StatusChanged

    tid = "20261129-013724-123-9f2c41d07b"
    at = 1_795_000_000.123456
    samples = [
        ("progress", Progress(tid, 1234, at, epoch=7, total_epochs=20, step=350, total_steps=782)),
        ("metrics (loss)", Metrics(tid, 1235, at, loss=0.4123456789)),
        (
            "metrics (loss, throughput, 2 extra)",
            Metrics(
                tid,
                1236,
                at,
                loss=0.41234,
                samples_per_second=10125.5,
                extra={"accuracy": 0.8125, "lr": 0.0003},
            ),
        ),
        ("heartbeat", Heartbeat(tid, 1237, at)),
        ("status", StatusChanged(tid, 1238, at, status="running", message="training")),
    ]
    from pulse_core.policy import LOG_INTERVAL
    from pulse_transports.file import DEFAULT_MAX_BYTES

    sizes = {what: len(encode(event)) for what, event in samples}
    out = ["| line | bytes |", "|---|---|"]
    out += [f"| {what} | {size} |" for what, size in sizes.items()]
    per_hour = (sizes["progress"] + sizes["metrics (loss)"]) * 3600 / LOG_INTERVAL
    out += [
        "",
        f"A run reporting progress and loss without pause writes about "
        f"{per_hour / 1e6:.1f} MB an hour to its log, so it reaches the default cap "
        f"({DEFAULT_MAX_BYTES // (1024 * 1024)} MiB) after about "
        f"{DEFAULT_MAX_BYTES / per_hour:.0f} hours.",
    ]
    return "\n".join(out)


def state_bounds() -> str:
    """The limits that keep a folded RunState bounded."""
    from pulse_core import state

    rows = [
        ("MAX_WINDOWS", "windows of history per metric"),
        ("MAX_SERIES", "metrics with a history"),
        ("MAX_METRIC_NAMES", "metric names with a latest value"),
        ("MAX_TIMELINE", "status timeline entries"),
        ("MAX_ERRORS", "error events"),
        ("MAX_ANOMALIES", "anomalies"),
        ("MAX_GAPS", "seq gap ranges (the most recent)"),
        ("HEAD_KEPT", "oldest entries a bounded list always keeps"),
    ]
    out = ["| constant | value | what it bounds |", "|---|---|---|"]
    out += [f"| `{name}` | {getattr(state, name)} | {text} |" for name, text in rows]
    return "\n".join(out)


def v1_status_words() -> str:
    """The status words of old v1 writers and the v2 state each one means."""
    from pulse_core.events import STATUSES
    from pulse_transports.v1 import STATUS_ALIASES

    by_state: dict[str, list[str]] = {state: [] for state in STATUSES}
    for word, state in STATUS_ALIASES.items():
        by_state[state].append(word)
    out = ["| v2 state | v1 `status` words read as it |", "|---|---|"]
    for state, words in by_state.items():
        out.append(f"| `{state}` | {', '.join(f'`{w}`' for w in sorted(words))} |")
    return "\n".join(out)


def truth_matrix() -> str:
    """What every reader shows for every way a run ends: ``tests/truth/matrix.py``'s table.

    The module is plain data (standard library only) and is loaded by path,
    so the docs show exactly what the truth-matrix test checks.
    """
    name = "pulse_docs_truth_matrix"
    spec = importlib.util.spec_from_file_location(name, TRUTH_MATRIX)
    if spec is None or spec.loader is None:
        raise PluginError(f"pulse docs: cannot load {TRUTH_MATRIX}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        return str(module.markdown())
    finally:
        sys.modules.pop(name, None)


GENERATORS: dict[str, Callable[[], str]] = {
    "truth-matrix": truth_matrix,
    "example-log": example_log,
    "sink-intervals": sink_intervals,
    "line-sizes": line_sizes,
    "state-bounds": state_bounds,
    "v1-status-words": v1_status_words,
    "lifecycle-diagram": lifecycle_diagram,
    "lifecycle-table": lifecycle_table,
    "error-codes": error_codes,
    "limits": limits,
    "config-keys": config_keys,
    "transport-options": transport_options,
    "environment": environment,
    "cli-reference": cli_reference,
    "exit-codes": exit_codes,
}
