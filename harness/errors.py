"""The one base class of every error metabench raises on purpose; imports nothing.

Each error keeps its own name and the builtin it always was (``ConfigError`` is still a
``ValueError``, ``RegistryError`` a ``KeyError``), so existing ``except ValueError`` code keeps
working, and also subclasses :class:`MetabenchError`, so a caller (the ``metabench`` command line,
a notebook, a plugin's test) catches every "this cannot be done, and here is why" in one clause::

    from metabench.harness.errors import MetabenchError

    try:
        config = load_config("my.toml")
    except MetabenchError as error:
        print(f"cannot run: {error}")

The message of each says what was received and what to do instead. Interruptions
(``RunInterrupted``, a ``KeyboardInterrupt``) are not errors and do not derive from it.
"""

from __future__ import annotations


class MetabenchError(Exception):
    """Something metabench cannot do as asked; the message names the value and the fix."""


class UsageError(MetabenchError, ValueError):
    """A command-line argument that cannot be used (a flag of another engine, a level outside (0, 1), ...)."""
