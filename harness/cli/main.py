"""The ``metabench`` command: parses arguments, hands each subcommand to its module in ``harness.cli``.

Errors: every error metabench raises on purpose derives from :class:`MetabenchError`; ``main``
catches it here, once, and prints ``metabench: error: <message>`` on stderr (exit status 2).
Commands return 1 themselves for a regression or a failed check.

Output: stdout holds a command's result (a table, or one JSON document with ``--json``); progress
bars, log lines and warnings go to stderr. TensorFlow's and absl's C++ log lines (a oneDNN notice,
"Could not find cuda drivers", "failed call to cuInit") are hidden unless ``--verbose`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

import rich

from metabench.harness.cli import (
    baseline,
    bench,
    bundles,
    check,
    conformance,
    episodes,
    listing,
    report,
    reproduce,
    run,
    stats,
    sweep,
)
from metabench.harness.errors import MetabenchError

#: Modules whose import prints absl C++ log lines before ``absl::InitializeLog()`` runs; those
#: lines ignore TF_CPP_MIN_LOG_LEVEL, so they are filtered out of stderr while the import runs.
LOUD_IMPORTS = ("tensorflow", "jax")
_ABSL_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] "  # I0000 00:00:1796140043.333407 4242 port.cc:153] ...
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$)"
)


def main(argv: list[str] | None = None) -> int:
    argv = _join_split_values(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    with contextlib.ExitStack() as stack:
        if not args.verbose:
            stack.enter_context(_quiet_libraries())
        stack.enter_context(_progress_on_stderr())
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            print("metabench: interrupted", file=sys.stderr)
            return 130
        except MetabenchError as error:
            print(f"metabench: error: {error}", file=sys.stderr)
            return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metabench", description="Benchmark few-shot meta-learning on fixed, fingerprinted episodes.")
    parser.add_argument("--verbose", action="store_true",
                        help="also show TensorFlow's and absl's own log lines (hidden by default)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (run, report, stats, sweep, check, baseline, bench, episodes, listing, bundles, reproduce, conformance):
        command.register(commands)
    _accept_after_the_command(parser, "--verbose")
    return parser


def _accept_after_the_command(parser: argparse.ArgumentParser, flag: str) -> None:
    """Let ``flag`` of ``parser`` also follow a (sub)command: ``metabench run CFG --verbose``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                sub.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _accept_after_the_command(sub, flag)


def _join_split_values(argv: list[str]) -> list[str]:
    """Rejoin a ``--set KEY=VALUE`` whose TOML value the shell split at its spaces.

    ``--set evaluation.shots=[5, 10]`` typed without quotes reaches us as two words,
    ``evaluation.shots=[5,`` and ``10]``, and argparse would refuse ``10]`` as a stray argument.
    While a value that opens with ``[``, ``{`` or a quote is not closed, the next words (up to
    the next ``--option``) belong to it.
    """
    joined: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--set" and i < len(argv):
            word = argv[i]
            joined.append("--set")
            i += 1
        elif not word.startswith("--set="):
            joined.append(word)
            continue
        value = word.partition("--set=")[2] if word.startswith("--set=") else word
        while _unclosed(value.partition("=")[2]) and i < len(argv) and not argv[i].startswith("--"):
            word += " " + argv[i]
            value += " " + argv[i]
            i += 1
        joined.append(word)
    return joined


def _unclosed(value: str) -> bool:
    """Whether the TOML ``value`` opens an array, inline table or string that it does not close."""
    value = value.strip()
    if not value or value[0] not in "[{\"'":
        return False
    depth, quote = 0, None
    for char in value:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return depth > 0 or quote is not None


@contextlib.contextmanager
def _quiet_libraries():
    """Hide TensorFlow's and absl's C++ log lines for the duration of a command.

    TF_CPP_MIN_LOG_LEVEL=3 (unless the caller set it) silences the lines logged after start-up; the
    ones printed while the libraries load are filtered out of file descriptor 2 by
    :class:`_QuietImports`. absl's and TensorFlow's Python loggers are set to errors only (TensorFlow's
    warns of retracing when prequential evaluation compiles one evaluator per support size, on purpose).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    finder = _QuietImports()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _QuietImports(importlib.abc.MetaPathFinder):
    """Runs the first import of each of :data:`LOUD_IMPORTS` inside :func:`_absl_lines_filtered`."""

    def __init__(self):
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if self._finding or name not in LOUD_IMPORTS:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with _absl_lines_filtered():
                load(module)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _absl_lines_filtered():
    """Catch what is written to file descriptor 2 (C++ code included) and write back all but absl log lines."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _ABSL_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def _progress_on_stderr():
    """Point rich's global console (progress bars) at stderr for a command, so stdout holds only its result."""
    console = rich.get_console()
    saved = dict(console.__dict__)
    rich.reconfigure(stderr=True)
    try:
        yield
    finally:
        console.__dict__ = saved


if __name__ == "__main__":
    sys.exit(main())
