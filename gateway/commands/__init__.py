"""CLI sub-commands. Each module exposes ``register(subparsers)``; the parser it adds sets ``func``,
called with the parsed ``args`` and returning the process exit code."""
