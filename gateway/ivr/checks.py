"""Static checks of a parsed IVR tree: what a single node's model cannot see.

``check_tree`` is pure (references, reachability, cycles without caller input, keys, languages, variables);
``check_prompts`` reads the prompt directory (files exist, soundfile can read them, mono, not empty; say
fragments present). Each finding carries the YAML path of the offending value; the loader turns it into
``FILE:LINE:COL``.

Decisions:
- Unreachable nodes are **warnings**: they cannot misroute a call, and operators keep spare nodes in a draft
  (a seasonal closure message swapped in by editing one target). ``ivr validate --strict`` makes them fail.
- Prompt audio: any sample rate is accepted (prompts are resampled once to the line rate when loaded); an
  unreadable, multi-channel or empty file is an error, a rate below 8 kHz a warning (sounds muffled). There is
  no length limit: hold playlists carry lectures of several minutes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import soundfile

from gateway.ivr.model import (
    BUILTIN_VARIABLES,
    PROMPT_EXTENSIONS,
    IvrTree,
    LanguageNode,
    MenuNode,
    QueueNode,
    SayNode,
    SayValue,
    ScheduleNode,
    SetNode,
    SurveyNode,
    WebhookNode,
    expand_prompt,
    say_fragments_needed,
    say_languages,
)

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Finding:
    path: Path_  # keys from the document root, e.g. ("nodes", "main", "options", "1")
    message: str
    severity: Literal["error", "warning"] = "error"
    at_key: bool = False  # point at the key (a node id) rather than its value


def _field(path: Path_) -> str:
    """('questions', 0, 'prompt') -> 'questions[0].prompt'."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_tree(tree: IvrTree, *, invalid_nodes: frozenset[str] = frozenset()) -> list[Finding]:
    """Whole-tree checks. ``invalid_nodes`` exist in the file but failed their own validation (already
    reported): references to them are not "missing", and reachability is not judged."""
    out: list[Finding] = []
    out += _references(tree, invalid_nodes)
    if not invalid_nodes:
        out += _unreachable(tree)
    out += _cycles_without_input(tree)
    out += _keys(tree)
    out += _languages(tree)
    out += _variables(tree)
    return out


def _references(tree: IvrTree, invalid: frozenset[str]) -> list[Finding]:
    known = set(tree.nodes) | invalid
    out = []

    def check(path: Path_, target: str | None, what: str) -> None:
        if target is not None and target not in known:
            out.append(Finding(path, f"{what} {target!r} is not a node{_suggest(target, known)}"))

    check(("entry",), tree.entry, "entry")
    check(("main_menu",), tree.main_menu, "main_menu")
    check(("loop_fallback",), tree.loop_fallback, "loop_fallback")
    for node_id, node in tree.nodes.items():
        for edge in node.edges():
            check(("nodes", node_id, *edge.path), edge.target, f"{edge.label}: target")
        if isinstance(node, ScheduleNode) and node.schedule not in tree.schedules:
            hint = _suggest(node.schedule, tree.schedules) or (
                f" (defined: {', '.join(tree.schedules)})" if tree.schedules else " (no `schedules:` defined)"
            )
            out.append(
                Finding(("nodes", node_id, "schedule"), f"schedule {node.schedule!r} is not defined{hint}")
            )
    used = {n.schedule for n in tree.nodes.values() if isinstance(n, ScheduleNode)}
    for name in tree.schedules:
        if name not in used:
            out.append(
                Finding(("schedules", name), f"schedule {name!r} is not used by any node", "warning", True)
            )
    return out


def successors(tree: IvrTree, node_id: str) -> list[str]:
    node = tree.nodes[node_id]
    targets = [e.target for e in node.edges()]
    if isinstance(node, MenuNode) and node.top_key:
        targets.append(tree.main_menu or tree.entry)
    return [t for t in targets if t in tree.nodes]


def reachable(tree: IvrTree) -> set[str]:
    """Nodes a call can reach: from entry, and from main_menu and loop_fallback (entered implicitly)."""
    roots = [r for r in (tree.entry, tree.main_menu, tree.loop_fallback) if r in tree.nodes]
    seen: set[str] = set(roots)
    todo = list(roots)
    while todo:
        for nxt in successors(tree, todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _unreachable(tree: IvrTree) -> list[Finding]:
    if tree.entry not in tree.nodes:
        return []
    seen = reachable(tree)
    return [
        Finding(
            ("nodes", n),
            f"node {n!r} is unreachable: no path leads to it from entry {tree.entry!r}",
            "warning",
            True,
        )
        for n in tree.nodes
        if n not in seen
    ]


def _cycles_without_input(tree: IvrTree) -> list[Finding]:
    """A cycle of nodes none of which waits for the caller would spin (until the loop guard hangs up)."""
    passive = {i for i, n in tree.nodes.items() if not n.waits_for_caller}
    graph = {i: [t for t in successors(tree, i) if t in passive] for i in passive}
    order = {node_id: k for k, node_id in enumerate(tree.nodes)}
    found: dict[frozenset[str], list[str]] = {}
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    for root in passive:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node_id, i = stack[-1]
            if i < len(graph[node_id]):
                stack[-1] = (node_id, i + 1)
                nxt = graph[node_id][i]
                if state.get(nxt) == 1:  # back edge: the path from nxt to here is a cycle
                    cycle = path[path.index(nxt) :]
                    found.setdefault(frozenset(cycle), cycle)
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node_id] = 2
                stack.pop()
                path.pop()
    out = []
    for cycle in found.values():
        first = min(range(len(cycle)), key=lambda k: order[cycle[k]])
        cycle = cycle[first:] + cycle[:first]  # start at the node written first in the file
        shown = " -> ".join([*cycle, cycle[0]])
        out.append(
            Finding(
                ("nodes", cycle[0]),
                f"cycle without caller input: {shown} (no node in it waits for "
                "a key, a recording or an operator; add a menu or a hangup)",
                at_key=True,
            )
        )
    return sorted(out, key=lambda f: order[str(f.path[1])])


def _keys(tree: IvrTree) -> list[Finding]:
    out = []
    for node_id, node in tree.nodes.items():
        if not isinstance(node, MenuNode):
            continue
        taken: dict[str, str] = {k: "an option" for k in (node.options or {})}
        if node.collect:
            taken.update({d: "a digit of the input" for d in "0123456789"})
            if node.collect.terminator:
                taken[node.collect.terminator] = "the terminator"
        for field in ("back_key", "repeat_key", "top_key"):
            key = getattr(node, field)
            if key is None:
                continue
            if key in taken:
                out.append(Finding(("nodes", node_id, field), f"{field} {key!r} is already {taken[key]}"))
            taken[key] = f"the {field}"
    return out


def _language_map(path: Path_, mapping: dict[str, str], tree: IvrTree, what: str) -> list[Finding]:
    out = []
    for lang in mapping:
        if lang not in tree.languages:
            out.append(
                Finding(
                    (*path, lang),
                    f"{what}: {lang!r} is not one of the tree's languages ({', '.join(tree.languages)})",
                    "warning",
                    True,
                )
            )
    if tree.default_language not in mapping:
        out.append(Finding(path, f"{what} has no {tree.default_language!r} (default language) version"))
    else:
        for lang in tree.languages:
            if lang not in mapping:
                out.append(
                    Finding(
                        path,
                        f"{what} has no {lang!r} version: those callers hear the "
                        f"{tree.default_language!r} one",
                        "warning",
                    )
                )
    return out


def _languages(tree: IvrTree) -> list[Finding]:
    out = []
    if tree.default_language not in tree.languages:
        out.append(
            Finding(
                ("default_language",),
                f"default_language {tree.default_language!r} is not in "
                f"languages ({', '.join(tree.languages)})",
            )
        )
        return out
    for node_id, node in tree.nodes.items():
        for path, ref in node.prompt_refs():
            if isinstance(ref, dict):
                out += _language_map(("nodes", node_id, *path), ref, tree, _field(path))
        if isinstance(node, SurveyNode):
            for i, q in enumerate(node.questions):
                if isinstance(q.text, dict):
                    where = ("questions", i, "text")
                    out += _language_map(("nodes", node_id, *where), q.text, tree, _field(where))
        if isinstance(node, LanguageNode):
            for key, lang in node.options.items():
                if lang not in tree.languages:
                    out.append(
                        Finding(
                            ("nodes", node_id, "options", key),
                            f"{lang!r} is not one of the tree's languages ({', '.join(tree.languages)})",
                        )
                    )
        if isinstance(node, SetNode) and "language" in node.variables:
            lang = node.variables["language"]
            if lang not in tree.languages:
                out.append(
                    Finding(
                        ("nodes", node_id, "variables", "language"),
                        f"{lang!r} is not one of the tree's languages ({', '.join(tree.languages)})",
                    )
                )
    return out


def defined_variables(tree: IvrTree) -> set[str]:
    names = set(BUILTIN_VARIABLES)
    for node in tree.nodes.values():
        if isinstance(node, MenuNode) and node.collect:
            names.add(node.collect.store_as)
        elif isinstance(node, WebhookNode):
            names.update(node.store)
        elif isinstance(node, SetNode):
            names.update(node.variables)
    return names


def _variables(tree: IvrTree) -> list[Finding]:
    known = defined_variables(tree)
    readonly = BUILTIN_VARIABLES - {"language"}
    out = []

    def use(path: Path_, name: str) -> None:
        if name not in known:
            out.append(
                Finding(
                    path,
                    f"variable {name!r} is never set (by a menu's collect.store_as, a set node "
                    f"or a webhook's store){_suggest(name, known)}",
                )
            )

    def assign(path: Path_, name: str) -> None:
        if name in readonly:
            out.append(Finding(path, f"variable {name!r} is built in and cannot be assigned", at_key=True))

    for node_id, node in tree.nodes.items():
        base = ("nodes", node_id)
        if isinstance(node, SayNode):
            for i, item in enumerate(node.items):
                if isinstance(item, SayValue):
                    use((*base, "items", i, "var"), item.var)
        elif isinstance(node, WebhookNode):
            for i, name in enumerate(node.send):
                use((*base, "send", i), name)
            for name in node.store:
                assign((*base, "store", name), name)
        elif isinstance(node, SetNode):
            for name in node.variables:
                assign((*base, "variables", name), name)
        elif isinstance(node, MenuNode) and node.collect:
            if node.collect.store_as in BUILTIN_VARIABLES:
                out.append(
                    Finding(
                        (*base, "collect", "store_as"),
                        f"variable {node.collect.store_as!r} is built in and cannot be assigned",
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------- files


def resolve_prompt(root: Path, ref: str) -> Path | None:
    """The file a reference names: as written, else with the first extension that exists."""
    base = root / ref
    if base.is_file():
        return base
    for ext in PROMPT_EXTENSIONS:
        candidate = base.with_name(base.name + ext)
        if candidate.is_file():
            return candidate
    return None


def audio_problem(path: Path) -> tuple[str, str] | None:
    """(severity, message) when the file cannot be played as a prompt; None when it can."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        reason = " ".join(str(exc).split()).replace(f"Error opening {str(path)!r}: ", "")
        return "error", f"cannot be read as audio ({reason})"
    if info.frames <= 0 or info.samplerate <= 0:
        return "error", "is empty (no audio frames)"
    if info.channels != 1:
        return "error", f"has {info.channels} channels; prompts must be mono"
    if info.samplerate < 8000:
        return "warning", f"is sampled at {info.samplerate} Hz, below the 8 kHz line rate (sounds muffled)"
    return None


def check_prompts(tree: IvrTree, root: Path) -> list[Finding]:
    """Every prompt file (per language) exists under ``root`` and is playable; say fragments are present."""
    out: list[Finding] = []
    audio_cache: dict[Path, tuple[str, str] | None] = {}
    tried = "/".join(e.lstrip(".") for e in PROMPT_EXTENSIONS)
    for node_id, node in tree.nodes.items():
        for path, ref in node.prompt_refs():
            for lang, rel in expand_prompt(ref, tree.languages).items():
                where = ("nodes", node_id, *path, *([lang] if isinstance(ref, dict) else []))
                label = f"prompt {rel!r}" + (f" ({lang})" if lang and not isinstance(ref, dict) else "")
                found = resolve_prompt(root, rel)
                if found is None:
                    out.append(Finding(where, f"{label}: no such file in {root} (also tried .{tried})"))
                    continue
                if found not in audio_cache:
                    audio_cache[found] = audio_problem(found)
                problem = audio_cache[found]
                if problem:
                    out.append(Finding(where, f"{label}: {found.name} {problem[1]}", problem[0]))  # type: ignore[arg-type]
    out += _fragments(tree, root, audio_cache)
    return out


def _fragments(tree: IvrTree, root: Path, audio_cache: dict) -> list[Finding]:
    out = []
    reported: set[tuple[str, str]] = set()
    for node_id, node in tree.nodes.items():
        kinds = node.say_kinds()
        if isinstance(node, SayNode):
            where_of = {
                it.as_: ("nodes", node_id, "items", i, "as")
                for i, it in reversed(list(enumerate(node.items)))
                if isinstance(it, SayValue)
            }
        elif isinstance(node, QueueNode):
            where_of = {"number": ("nodes", node_id, "announce")}
        else:
            where_of = {}
        for kind in sorted(kinds):
            for lang in tree.languages:
                if (kind, lang) in reported:
                    continue
                reported.add((kind, lang))
                needed = say_fragments_needed(kind, lang)
                where = where_of.get(kind, ("nodes", node_id))
                if needed is None:
                    out.append(
                        Finding(
                            where,
                            f"cannot say a {kind} in {lang!r}: no fragment rules for it "
                            f"(supported: {', '.join(say_languages())})",
                        )
                    )
                    continue
                folder = tree.say_fragments.replace("{lang}", lang)
                missing = [n for n in needed if resolve_prompt(root / folder, n) is None]
                if missing:
                    shown = ", ".join(missing[:8]) + (
                        f" ... ({len(missing)} in all)" if len(missing) > 8 else ""
                    )
                    out.append(
                        Finding(
                            where,
                            f"saying a {kind} in {lang!r} needs fragment files missing from "
                            f"{root / folder}: {shown}",
                        )
                    )
                    continue
                for name in needed:
                    found = resolve_prompt(root / folder, name)
                    if found not in audio_cache:
                        audio_cache[found] = audio_problem(found)
                    if audio_cache[found] and audio_cache[found][0] == "error":
                        out.append(
                            Finding(where, f"say fragment {folder}/{found.name} {audio_cache[found][1]}")
                        )
    return out
