"""Load and validate an IVR tree from YAML, reporting every problem as ``FILE:LINE:COL: message``.

The YAML is loaded round-trip (ruamel.yaml) so each key and value keeps its line and column; pydantic errors
and static-check findings are both mapped back to the exact value. All problems come at once, sorted by
position, never as a traceback:

1. YAML syntax (one problem: the parser stops there);
2. the models (every shape error in every node);
3. the whole-tree checks (``gateway.ivr.checks.check_tree``), also run when some nodes failed step 2;
4. prompt files, when a prompt directory is known (a file's own directory by default).

``validate_text`` serves the future ``POST /v1/ivr/draft/validate``; ``load_tree`` is what a runtime uses.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gateway.ivr.checks import Finding, check_prompts, check_tree
from gateway.ivr.model import NODE_CLASSES, NODE_TYPES, IvrTree


@dataclass(frozen=True)
class Problem:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        tag = "" if self.severity == "error" else "warning: "
        return f"{self.file}:{self.line}:{self.column}: {tag}{self.message}"

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass
class ValidationResult:
    tree: IvrTree | None  # None when the document's structure is not usable
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


class IvrError(Exception):
    """The tree cannot be used; ``problems`` lists every reason with its position."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


class _DatesAsText(RoundTripConstructor):
    """Leave YAML timestamps as text: pydantic parses them and reports a bad date (2026-02-30) at its
    position, where ruamel would raise a bare ValueError without one."""

    def construct_yaml_timestamp(self, node, values=None):  # noqa: ANN001 - ruamel's signature
        return self.construct_scalar(node)


_DatesAsText.add_constructor("tag:yaml.org,2002:timestamp", _DatesAsText.construct_yaml_timestamp)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _DatesAsText
    return yaml


# ------------------------------------------------------------------------------------------- positions


def _find_key(mapping: CommentedMap, name: Any) -> Any:
    if name in mapping:
        return name
    for key in mapping:
        if str(key) == str(name):
            return key
    for key in mapping:  # DTMF keys are normalised to upper case: `a:` is reported as 'A'
        if len(str(name)) == 1 and str(key).upper() == str(name):
            return key
    return _MISSING


_MISSING = object()


def locate(doc: Any, path: tuple[Any, ...], *, at_key: bool = False) -> tuple[int, int, tuple[Any, ...]]:
    """(line, column) 1-based of the value at ``path`` and the part of the path found in the document.

    Nested mappings and sequences, and ``at_key``, point at the key. An element missing from the document
    (a pydantic tag, a missing key) is skipped, leaving the position at the deepest element found."""
    if path and path[-1] == "[key]":
        path, at_key = path[:-1], True
    line, col = 0, 0
    found: list[Any] = []
    node = doc
    for i, element in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, CommentedMap):
            key = _find_key(node, element)
            if key is _MISSING:
                continue
            nested = isinstance(node[key], (CommentedMap, CommentedSeq))
            line, col = node.lc.key(key) if nested or (last and at_key) else node.lc.value(key)
            node = node[key]
            found.append(element)
        elif isinstance(node, CommentedSeq) and isinstance(element, int) and 0 <= element < len(node):
            line, col = node.lc.item(element)
            node = node[element]
            found.append(element)
    return line + 1, col + 1, tuple(found)


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


# --------------------------------------------------------------------------------------------- pydantic


def _pydantic_problems(
    doc: CommentedMap, exc: ValidationError, filename: str
) -> tuple[list[Problem], set[str]]:
    problems: list[Problem] = []
    bad_nodes: set[str] = set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        kind = err["type"]
        node_type = None
        if len(loc) >= 2 and loc[0] == "nodes":
            bad_nodes.add(str(loc[1]))
            if len(loc) > 2 and loc[2] in NODE_TYPES:
                node_type, loc = loc[2], loc[:2] + loc[3:]  # the discriminator tag is not in the YAML
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            line, col, shown = locate(doc, (*loc, "type"))
            if kind == "union_tag_not_found":
                msg = f"node {loc[-1]!r} needs `type:` (one of {', '.join(NODE_TYPES)})"
                line, col, shown = locate(doc, loc, at_key=True)
            else:
                got = str(err["input"].get("type")) if isinstance(err["input"], dict) else "?"
                close = difflib.get_close_matches(got, NODE_TYPES, n=1)
                msg = f"unknown node type {got!r} (one of {', '.join(NODE_TYPES)})" + (
                    f"; did you mean {close[0]!r}?" if close else ""
                )
            problems.append(Problem(filename, line, col, msg))
            continue
        line, col, shown = locate(doc, loc, at_key=kind == "extra_forbidden")
        where = _dotted(shown)
        if kind == "extra_forbidden":
            name = str(loc[-1])
            hint = ""
            if node_type in NODE_CLASSES:
                allowed = [f.alias or n for n, f in NODE_CLASSES[node_type].model_fields.items()]
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            parent = _dotted(shown[:-1])
            msg = f"{parent}: unknown key {name!r}{hint}" if parent else f"unknown key {name!r}{hint}"
        elif kind == "missing":
            name = str(loc[-1])
            parent = _dotted(shown)
            what = f"{node_type} node" if node_type and len(shown) == 2 else parent
            msg = f"{what or 'the document'}: required key {name!r} is missing"
            if node_type and len(shown) == 2:
                msg = f"{parent}: {what} needs {name!r}"
        else:
            text = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
            value = err.get("input")
            if (
                value is not None
                and not isinstance(value, (dict, list))
                and repr(value) not in text
                and str(value) not in text
            ):
                text += f" (got {value!r})"
            msg = f"{where}: {text}" if where else text
        problems.append(Problem(filename, line, col, msg))
    return problems, bad_nodes


def _plain(node: Any) -> Any:
    """ruamel containers -> dict/list with string keys (YAML reads an unquoted `1:` key as a number)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _finding_problem(doc: CommentedMap, finding: Finding, filename: str) -> Problem:
    line, col, _ = locate(doc, finding.path, at_key=finding.at_key)
    return Problem(filename, line, col, finding.message, finding.severity)


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line, p.column, p.severity != "error", p.message))


# -------------------------------------------------------------------------------------------------- API


def validate_text(
    text: str, *, filename: str = "<draft>", prompts_dir: str | Path | None = None
) -> ValidationResult:
    """Validate YAML text; prompt files are checked only when ``prompts_dir`` is given."""
    try:
        doc = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = " ".join(str(exc.problem or exc).split())
        context = f" ({' '.join(exc.context.split())})" if exc.context else ""
        return ValidationResult(None, [Problem(filename, line, col, f"YAML syntax: {reason}{context}")])
    except YAMLError as exc:
        return ValidationResult(None, [Problem(filename, 1, 1, f"YAML: {' '.join(str(exc).split())}")])
    if not isinstance(doc, CommentedMap):
        what = "empty" if doc is None else ("a list" if isinstance(doc, list) else "a single value")
        return ValidationResult(
            None,
            [
                Problem(
                    filename,
                    1,
                    1,
                    f"the document is {what}; an IVR tree is a mapping with `entry:` and `nodes:`",
                )
            ],
        )
    data = _plain(doc)
    problems: list[Problem] = []
    bad_nodes: set[str] = set()
    try:
        tree = IvrTree.model_validate(data)
    except ValidationError as exc:
        problems, bad_nodes = _pydantic_problems(doc, exc, filename)
        top_level_ok = all(err["loc"][:1] == ("nodes",) and len(err["loc"]) >= 2 for err in exc.errors())
        nodes = data.get("nodes")
        if not top_level_ok or not isinstance(nodes, dict) or not set(nodes) - bad_nodes:
            return ValidationResult(None, _sorted(problems))
        data["nodes"] = {k: v for k, v in nodes.items() if k not in bad_nodes}
        try:
            tree = IvrTree.model_validate(data)
        except ValidationError:  # pragma: no cover - the remaining nodes validated above
            return ValidationResult(None, _sorted(problems))
    findings = check_tree(tree, invalid_nodes=frozenset(bad_nodes))
    if prompts_dir is not None:
        findings += check_prompts(tree, Path(prompts_dir))
    problems += [_finding_problem(doc, f, filename) for f in findings]
    return ValidationResult(None if bad_nodes else tree, _sorted(problems))


def validate_file(path: str | Path, *, prompts_dir: str | Path | None = None) -> ValidationResult:
    """Validate a tree file; prompts resolve against ``prompts_dir`` or else the file's own directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        return ValidationResult(None, [Problem(str(path), 1, 1, f"cannot read: {exc.strerror or exc}")])
    except UnicodeDecodeError as exc:
        return ValidationResult(None, [Problem(str(path), 1, 1, f"not UTF-8 text: {exc.reason}")])
    root = Path(prompts_dir) if prompts_dir is not None else p.parent
    return validate_text(text, filename=str(path), prompts_dir=root)


def load_tree(path: str | Path, *, prompts_dir: str | Path | None = None) -> IvrTree:
    """A tree that passed every check (warnings allowed), or IvrError listing every error."""
    result = validate_file(path, prompts_dir=prompts_dir)
    if result.errors or result.tree is None:
        raise IvrError(result.errors)
    return result.tree
