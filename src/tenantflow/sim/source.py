"""Reading a scenario file: YAML nodes to plain data, remembering the line of every field.

The file is parsed with PyYAML's node API (:func:`yaml.compose`), not ``safe_load``, so every
mapping key and sequence item keeps its position. :func:`read_yaml` returns the plain data and
a :class:`Lines` index from field paths (``("tenants", 2, "policy", "max_active_runs")``) to
1-based line numbers; whatever later finds a field invalid asks :meth:`Lines.error` for a
:class:`ScenarioError` that names the file, the line and the field, e.g.
``monday.yaml:14: tenants[2].policy.max_active_runs: must be >= 0 (got -3)``.

Anchors, aliases and merge keys (``<<: *defaults``) work as in any YAML file; a duplicated key
is refused rather than silently keeping the last value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tenantflow.errors import ConfigurationError

__all__ = [
    "Lines",
    "Path",
    "ScenarioError",
    "configuration_error_path",
    "format_path",
    "read_yaml",
]

Path = tuple[str | int, ...]
"""A field's location in the scenario: mapping keys and sequence indexes from the root."""

_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DEPTH: Final = 64


class ScenarioError(ConfigurationError):
    """The scenario file is invalid.

    Fields: ``file``, ``line`` (1-based; None when the file could not be read), ``field`` (the
    field path, e.g. ``tenants[2].policy.max_active_runs``; empty for the whole file) and,
    when known, ``value``.
    """

    code = "scenario_invalid"


def format_path(path: Sequence[str | int]) -> str:
    """A field path as text: ``tenants[2].policy.rate_limits["tool:x"]``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]".replace("'", '"'))
    return "".join(out)


class Lines:
    """Line numbers of the fields of one scenario file, and errors that cite them.

    Args:
        source: The file name to print in errors.
        lines: 1-based line per field path (the root is ``()``).
    """

    def __init__(self, source: str, lines: dict[Path, int]) -> None:
        self.source = source
        self._lines = lines

    def line(self, path: Sequence[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor present in the file."""
        key = tuple(path)
        while key:
            line = self._lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return self._lines.get((), 1)

    def error(
        self, path: Sequence[str | int], message: str, *, value: Any = None, with_value: bool = True
    ) -> ScenarioError:
        """A :class:`ScenarioError` for the field at ``path``.

        Args:
            path: The field.
            message: What is wrong, without the location.
            value: The offending value, appended as ``(got ...)`` when ``with_value``.
            with_value: Whether to append the value.
        """
        line = self.line(path)
        field = format_path(path)
        text = " ".join(message.split())
        if with_value and value is not None and "(got " not in text:
            text = f"{text} (got {_short(value)})"
        where = f"{self.source}:{line}: {field}: " if field else f"{self.source}:{line}: "
        return ScenarioError(
            where + text, file=self.source, line=line, field=field, value=_plain(value)
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None) else _short(value)


def read_yaml(text: str, source: str) -> tuple[Any, Lines]:
    """Parse ``text`` into plain data (dicts, lists, scalars) and the line of every field.

    Args:
        text: The YAML document.
        source: The file name used in errors.

    Raises:
        ScenarioError: a YAML syntax error, several documents, an empty file, a duplicated
            key, a non-scalar key, or an unknown tag (with the line where it was found).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ScenarioError(
            f"{source}:{line}: YAML syntax error: {problem}", file=source, line=line, field=""
        ) from None
    except yaml.YAMLError as exc:  # e.g. a character YAML does not allow: one line, its line
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise ScenarioError(
            f"{source}:{line}: YAML error: {problem}", file=source, line=line, field=""
        ) from None
    if node is None:
        raise ScenarioError(f"{source}:1: the file is empty", file=source, line=1, field="")
    lines: dict[Path, int] = {(): node.start_mark.line + 1}
    reader = _Reader(source, lines)
    return reader.value(node, (), 0), Lines(source, lines)


class _Reader:
    """Turns a node tree into plain data, recording the line of each mapping key and item."""

    def __init__(self, source: str, lines: dict[Path, int]) -> None:
        self.source = source
        self.lines = lines
        self.constructor = SafeConstructor()

    def fail(self, node: Node, message: str) -> ScenarioError:
        line = node.start_mark.line + 1
        return ScenarioError(f"{self.source}:{line}: {message}", file=self.source, line=line)

    def value(self, node: Node, path: Path, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {_MAX_DEPTH} levels (a recursive alias?)")
        if isinstance(node, MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, SequenceNode):
            out: list[Any] = []
            for index, item in enumerate(node.value):
                item_path = (*path, index)
                self.lines[item_path] = item.start_mark.line + 1
                out.append(self.value(item, item_path, depth + 1))
            return out
        return self.scalar(node)

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        try:
            self.constructor.flatten_mapping(node)  # resolves merge keys (<<) in place
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, f"invalid merge key: {exc.problem}") from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, "a mapping key must be a plain value")
            key = self.scalar(key_node)
            if not isinstance(key, str):
                key = str(key)  # `1: x` or `true: x`: keys are field names, compared as text
            if key in out:
                raise self.fail(key_node, f"{format_path((*path, key))}: duplicated key")
            key_path = (*path, key)
            self.lines[key_path] = key_node.start_mark.line + 1
            out[key] = self.value(value_node, key_path, depth + 1)
        return out

    def scalar(self, node: Node) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, f"invalid value: {exc.problem}") from None
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp out of range
            raise self.fail(node, f"invalid value: {exc}") from None


def configuration_error_path(error: ConfigurationError) -> tuple[str, ...]:
    """The dotted ``field`` of a policy :class:`ConfigurationError`, as path parts.

    ``"rate_limits.tool:credit_bureau"`` gives ``("rate_limits", "tool:credit_bureau")``: the
    resource name may itself contain dots, so everything after ``rate_limits.`` is one part.
    """
    field = str(error.fields.get("field") or "")
    if not field:
        return ()
    head, _, rest = field.partition(".")
    if head == "rate_limits" and rest:
        return (head, rest)
    return tuple(part for part in field.split(".") if part)
