"""Schema migrations: ``NNNN_name.sql`` files applied in order, each recorded in ``schema_version``.

Never edit a released file: add the next number. A database whose version is higher than the newest file
was written by a newer gateway and is refused (downgrades would silently lose columns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(
                f"schema migrations must be numbered 0001, 0002, ... without gaps; "
                f"expected {expected:04d}, found {migration.version:04d}_{migration.name}.sql"
            )
    return found
