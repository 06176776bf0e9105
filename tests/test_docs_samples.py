"""Every code sample in README.md and docs/*.md runs as written.

Conventions for the pages (an HTML comment on the line just above a fenced block; it does not
show on GitHub):

- ``bash``, ``sh``, ``shell``, ``console`` and ``python`` blocks are **run**. All the runnable
  blocks of one page run in order, in one bash process, in a scratch folder of their own, as a
  reader following the page in one terminal would run them: shell variables and files carry from
  block to block. A ``console`` block runs its ``$ `` lines. A ``python`` block runs as
  ``python - <<EOF``, so it imports modules the page wrote into the folder.
- The scratch folder stands in for the repository root: it holds a copy of ``reports/`` (without
  any results store) and of ``tests/baselines/``, and nothing else. Runs go to its own
  ``reports/results.sqlite``; ``METABENCH_DATA`` is unset, so no image data is read.
- ``<!-- not-run: why -->`` (the reason is required): the block is not run (long training, an
  install, data or run ids of your own). Its shell commands are still checked: each starts with a
  known program (``metabench``, ``pip``, ``pytest``, ``python`` or a little plain shell), a
  ``metabench X`` names a real subcommand (``metabench baseline save``: a real sub-subcommand),
  every ``--flag`` in it appears in ``metabench X --help``, and ``pip install -e ".[extra]"``
  names an extra of pyproject.toml. A not-run python block must compile.
- ``<!-- file: PATH -->``: the block is a file that later blocks use (a config, a sweep, a plugin
  module). It is written to PATH, relative to the scratch folder, when the page runs. A TOML file
  must parse.
- ``<!-- synopsis -->`` on a ``text`` block: a command reference. Each ``metabench ...`` line is
  checked like a not-run command (subcommand and flags), without shell parsing.
- Other blocks (``toml``, ``json``, ``yaml``, output) are not run; a ``toml`` block must parse.

Every relative link of the pages must point at a file of the repository (and at a heading of it,
for ``#anchor`` links into Markdown), and no page may point into ``../shared`` or at an absolute,
machine-specific path. The self-tests at the end feed the checks broken samples to show that they
fail.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_LANGS = {"python", "py"}
RUNNABLE_LANGS = SHELL_LANGS | PYTHON_LANGS
#: what a documented command may start with
PROGRAMS = {"metabench", "pip", "pytest", "python", "python3"}
#: plain shell the pages' scripts use between those commands
SHELL_WORDS = {"cd", "mkdir", "export", "echo", "cat", "git", "shift", "sleep", "awk", "ps", "wc", "mktemp", "[", "test", "true"}
SHELL_KEYWORDS = {"do", "then", "else", "elif", "!", "{"}
SHELL_ENDS = {"done", "fi", "}", "esac"}
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<<", "<<<", ">|"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
FUNCTION = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*\(\)\s*\{(.*)$")
FLAG = re.compile(r"--[A-Za-z][\w-]*")
DIRECTIVE = re.compile(r"^\s*<!--\s*(not-run|file|synopsis)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")

RUN_TIMEOUT_S = 600  # a page's whole script; the pages' runnable samples take seconds each


# --- extraction ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block of a page and the directive above it."""

    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None = None  # the reason, when marked not-run ("" when the reason is missing)
    file: str | None = None
    synopsis: bool = False

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.not_run is None and not self.synopsis and (self.file is not None or self.lang in RUNNABLE_LANGS)


def extract_blocks(text: str, page: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order, each with the directive on the line above."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.group(1), opening.group(2), opening.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence)) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        options: dict = {}
        k = i - 1
        while k >= 0 and DIRECTIVE.match(lines[k]):
            name, value = DIRECTIVE.match(lines[k]).groups()
            options[name] = value if value is not None else ""
            k -= 1
        blocks.append(Block(
            page, i + 1, lang, "\n".join(body) + "\n",
            not_run=options.get("not-run"),
            file=options.get("file") or None,
            synopsis="synopsis" in options,
        ))
        i = j + 1
    return blocks


def page_blocks(path: Path) -> list[Block]:
    return extract_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]


# --- the command line as it is ------------------------------------------------------------------


def _environment(home: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("METABENCH_DATA", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["MPLBACKEND"] = "Agg"
    if home is not None:
        env["METABENCH_CACHE"] = str(home / ".cache")
    return env


@functools.cache
def metabench_program() -> str:
    found = shutil.which("metabench", path=_environment()["PATH"])
    if not found:
        pytest.skip("the metabench command is not installed (pip install -e .)")
    return found


@functools.cache
def help_text(*path: str) -> str:
    """``metabench PATH... --help``; fails the test when the command does not exist."""
    done = subprocess.run([metabench_program(), *path, "--help"], capture_output=True, text=True, env=_environment(), timeout=120)
    assert done.returncode == 0, f"`metabench {' '.join(path)} --help` failed:\n{done.stderr[-2000:]}"
    return done.stdout


def subcommands(*path: str) -> set[str]:
    """The subcommands of ``metabench PATH...`` (argparse's ``{a,b,c} ...`` positional), or none."""
    usage = help_text(*path).split("\n\n")[0]
    found = re.search(r"\{([\w,+-]+)\}\s*\.\.\.", usage)
    return set(found.group(1).split(",")) if found else set()


def flag_errors(path: tuple[str, ...], words: list[str]) -> list[str]:
    text = help_text(*path)
    errors = []
    for word in words:
        flag = FLAG.match(word)  # --flag or --flag=value
        if flag and not re.search(rf"(?<![\w-]){re.escape(flag.group())}(?![\w-])", text):
            errors.append(f"`metabench {' '.join(path)}` has no flag {flag.group()}")
    return errors


def metabench_errors(args: list[str], synopsis: bool = False) -> list[str]:
    """What is wrong with ``metabench ARGS``: an unknown subcommand or flag."""
    errors = []
    position = 0
    while position < len(args) and args[position].startswith("-"):
        errors += flag_errors((), [args[position]])
        position += 1
    if position == len(args):
        return errors
    command = args[position]
    if synopsis and (command.isupper() or not command.isidentifier()):
        return errors  # a placeholder: `metabench --verbose COMMAND ...`
    if command not in subcommands():
        return errors + [f"`metabench {command}` is not a command (commands: {', '.join(sorted(subcommands()))})"]
    path = (command,)
    nested = subcommands(command)
    if nested:
        rest = [word for word in args[position + 1:] if not word.startswith("-")]
        if not rest or rest[0] not in nested:
            return errors + [f"`metabench {command}` needs one of {sorted(nested)}, not {rest[:1]}"]
        path = (command, rest[0])
    return errors + flag_errors(path, args[position + 1:])


@functools.cache
def extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def pip_errors(args: list[str]) -> list[str]:
    errors = []
    for word in args:
        wanted = re.fullmatch(r"\.\[([\w,-]+)\]", word)
        if wanted:
            errors += [f"pyproject.toml has no extra {extra!r}" for extra in wanted.group(1).split(",") if extra not in extras()]
    return errors


# --- shell commands of a block ------------------------------------------------------------------


def command_lines(block: Block) -> list[str]:
    """The logical lines of a shell block: continuation lines joined; for ``console``, the ``$ `` lines."""
    code = block.code
    if block.lang == "console":
        code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
    return re.sub(r"\\\n\s*", " ", code).splitlines()


def substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(...)`` outside single quotes replaced by a word, and their contents."""
    out, inner, i, quote = [], [], 0, ""
    while i < len(line):
        char = line[i]
        if quote != '"' and char == "'":
            quote = "" if quote == "'" else "'"
        elif quote != "'" and char == '"':
            quote = "" if quote == '"' else '"'
        elif quote != "'" and line.startswith("$(", i):
            depth, j, nested_quote = 1, i + 2, ""
            while j < len(line) and depth:
                if line[j] in "'\"" and nested_quote in ("", line[j]):
                    nested_quote = "" if nested_quote else line[j]
                elif not nested_quote:
                    depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2:j - 1])
            out.append("SUBSTITUTION")
            i = j
            continue
        out.append(char)
        i += 1
    return "".join(out), inner


def commands_of(line: str, functions: set[str]) -> list[list[str]]:
    """The simple commands of one shell line, as word lists (assignments and redirections dropped);
    the commands inside ``$(...)`` come first."""
    function = FUNCTION.match(line)
    if function:
        functions.add(function.group(1))
        line = function.group(2)
    line, inner = substitutions(line)
    nested = [words for part in inner for words in commands_of(part, functions)]
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands, current, skip = [], [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in REDIRECTIONS:
            skip = True
        elif token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    simple = []
    for words in commands:
        while words and (ASSIGNMENT.match(words[0]) or words[0] in SHELL_KEYWORDS | {"until", "while", "if", "time"}):
            words = words[1:]
        if words and words[0] == "for":
            continue
        if words and words[0] not in SHELL_ENDS:
            simple.append(words)
    return nested + simple


def shell_errors(block: Block) -> list[str]:
    """Every problem the static check finds in a shell block."""
    errors, functions = [], set()
    for line in command_lines(block):
        try:
            commands = commands_of(line, functions)
        except ValueError as error:
            errors.append(f"cannot parse {line!r}: {error}")
            continue
        for words in commands:
            program = words[0]
            if "/" in program and Path(program).name in PROGRAMS:
                program = Path(program).name  # a virtual environment's python or pip
            if program not in PROGRAMS | SHELL_WORDS | functions:
                errors.append(f"{' '.join(words)!r} starts with {program!r}, not one of {sorted(PROGRAMS)}")
            elif program == "metabench":
                errors += metabench_errors(words[1:])
            elif program == "pip":
                errors += pip_errors(words[1:])
    return errors


def synopsis_errors(block: Block) -> list[str]:
    errors = []
    for line in block.code.splitlines():
        line = line.split("#")[0]
        words = line.split()
        if not words or words[0] != "metabench":
            continue
        args = []
        for word in words[1:]:
            flags = FLAG.findall(word)
            if flags:
                args += flags
            elif re.fullmatch(r"[\w.-]+", word):
                args.append(word)
        errors += metabench_errors(args, synopsis=True)
    return errors


def static_errors(block: Block) -> list[str]:
    errors = []
    if block.not_run == "":
        errors.append("<!-- not-run --> needs a reason: <!-- not-run: why -->")
    if block.synopsis:
        return errors + synopsis_errors(block)
    if block.lang in SHELL_LANGS and block.file is None:
        errors += shell_errors(block)
    elif block.lang in PYTHON_LANGS:
        try:
            compile(block.code, block.where, "exec")
        except SyntaxError as error:
            errors.append(f"python does not compile: {error}")
    elif block.lang == "toml" or (block.file or "").endswith(".toml"):
        try:
            tomllib.loads(block.code)
        except tomllib.TOMLDecodeError as error:
            errors.append(f"TOML does not parse: {error}")
    return errors


# --- running a page -----------------------------------------------------------------------------


def page_script(blocks: list[Block]) -> str:
    """One bash script running the runnable blocks in order, each announced on stderr."""
    parts = ["set -e -o pipefail"]
    for number, block in enumerate(block for block in blocks if block.runs):
        end = f"METABENCH_DOC_SAMPLE_{number}"
        parts.append(f"echo '@@ sample {block.where}' >&2")
        if block.file is not None:
            target = shlex.quote(block.file)
            parts.append(f"mkdir -p \"$(dirname {target})\"\ncat > {target} <<'{end}'\n{block.code}{end}")
        elif block.lang in PYTHON_LANGS:
            parts.append(f"python - <<'{end}'\n{block.code}{end}")
        else:
            parts.append("\n".join(command_lines(block)))
    return "\n".join(parts) + "\n"


def scratch_repository(folder: Path) -> Path:
    """A folder standing in for the repository root: reports/ (no store) and tests/baselines/."""
    shutil.copytree(ROOT / "reports", folder / "reports", ignore=shutil.ignore_patterns("*.sqlite*", "checkpoints"))
    if (ROOT / "tests" / "baselines").is_dir():
        shutil.copytree(ROOT / "tests" / "baselines", folder / "tests" / "baselines")
    return folder


def run_blocks(blocks: list[Block], folder: Path) -> subprocess.CompletedProcess:
    metabench_program()
    return subprocess.run(
        ["bash", "-c", page_script(blocks)], cwd=folder, env=_environment(folder),
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )


def failure(done: subprocess.CompletedProcess) -> str:
    samples = re.findall(r"^@@ sample (\S+)$", done.stderr, flags=re.MULTILINE)
    where = samples[-1] if samples else "?"
    return (
        f"the sample at {where} failed (exit status {done.returncode}); its commands, as the page gives them, "
        f"did not run as written.\n--- stdout (end)\n{done.stdout[-3000:]}\n--- stderr (end)\n{done.stderr[-5000:]}"
    )


# --- the tests ----------------------------------------------------------------------------------


CHECKED_BLOCKS = [b for b in ALL_BLOCKS if b.lang in RUNNABLE_LANGS | {"toml"} or b.synopsis or b.file]


@pytest.mark.parametrize("block", CHECKED_BLOCKS, ids=lambda b: b.where)
def test_sample_is_well_formed(block):
    """Each block's directive, commands, flags, Python and TOML (static: no sample runs here)."""
    assert not static_errors(block), f"{block.where}: " + "\n".join(static_errors(block))


RUNNABLE_PAGES = [page for page in PAGES if any(block.runs for block in page_blocks(page))]
#: pages whose samples train for 13-33 s on 2 cores: run with `pytest -m slow`
SLOW_PAGES = {"README.md", "docs/adding-an-algorithm.md", "docs/configs.md"}


@pytest.mark.parametrize("page", [
    pytest.param(page, id=page.relative_to(ROOT).as_posix(),
                 marks=[pytest.mark.slow] if page.relative_to(ROOT).as_posix() in SLOW_PAGES else [])
    for page in RUNNABLE_PAGES
])  # fmt: skip
def test_page_samples_run_as_written(page, tmp_path):
    done = run_blocks(page_blocks(page), scratch_repository(tmp_path))
    assert done.returncode == 0, failure(done)


def test_readme_starts_with_install_run_and_the_ci_test_command():
    """The first block installs and runs the default job, then installs and runs the tests exactly as CI does."""
    first = page_blocks(ROOT / "README.md")[0]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.index("```") < text.index("\n## "), "the README must start with its commands, before any section"
    lines = [line.split("#")[0].strip() for line in first.code.splitlines() if line.split("#")[0].strip()]
    assert lines[0] == "pip install -e . && metabench run", lines
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert lines[1] == " && ".join(ci), f"the README's test command {lines[1]!r} is not what .ci/run runs: {ci}"


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^(```|~~~).*?^\1", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {github_anchor(match) for match in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", text, flags=re.MULTILINE)}


def link_errors(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    errors = []
    for forbidden in ("../shared", "/work/", "/home/", "/root/", "/Users/", "/tmp/"):
        if forbidden in text:
            errors.append(f"mentions {forbidden!r}: the docs must work in any clone, with relative paths")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#") and not target[1:]:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if file and not resolved.exists():
            errors.append(f"links to {target}, which does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            errors.append(f"links to {target}, but {resolved.name} has no heading #{anchor}")
    return errors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_links_resolve(page):
    assert not link_errors(page), "\n".join(link_errors(page))


# --- self-tests: the checks fail on broken samples ----------------------------------------------


def fake_page(markdown: str) -> list[Block]:
    return extract_blocks(textwrap.dedent(markdown), "fake.md")


BROKEN_STATIC = {
    "unknown-flag": """
        <!-- not-run: trains -->
        ```bash
        metabench run quickstart --no-such-flag
        ```
        """,
    "unknown-subcommand": """
        <!-- not-run: trains -->
        ```bash
        metabench train quickstart
        ```
        """,
    "unknown-sub-subcommand": """
        <!-- not-run: writes a file -->
        ```bash
        metabench baseline write RUN --out b.json
        ```
        """,
    "flag-of-another-command": """
        <!-- not-run: needs run ids -->
        ```bash
        metabench export RUN_ID --out x.jsonl.gz --budget 0.1
        ```
        """,
    "unknown-program": """
        <!-- not-run: destroys -->
        ```bash
        rm -rf reports
        ```
        """,
    "unknown-extra": """
        <!-- not-run: installs -->
        ```bash
        pip install -e ".[gpu]"
        ```
        """,
    "missing-reason": """
        <!-- not-run -->
        ```bash
        metabench list
        ```
        """,
    "synopsis-flag": """
        <!-- synopsis -->
        ```text
        metabench report [--store PATH] [--output DIR]
        ```
        """,
    "python-syntax": """
        <!-- not-run: illustration -->
        ```python
        def broken(:
        ```
        """,
    "bad-toml": """
        ```toml
        [train
        ```
        """,
}


@pytest.mark.parametrize("name", sorted(BROKEN_STATIC))
def test_static_check_fails_on_a_broken_sample(name):
    (block,) = fake_page(BROKEN_STATIC[name])
    assert static_errors(block), f"the {name} sample passed the static check"


def test_static_check_passes_good_samples():
    blocks = fake_page("""
        <!-- not-run: trains for minutes -->
        ```bash
        SMOKE="--set train.meta_iterations=20"
        RUN=$(metabench run quickstart $SMOKE --json | python -c "import json, sys; print(json.load(sys.stdin)['run_id'])")
        KERAS_BACKEND=jax metabench --verbose run quickstart --backend jax \\
          --set evaluation.episodes=20 --store "$(mktemp -d)/s.sqlite" > out.json 2>&1 && metabench baseline save $RUN --out b.json
        pip install -e ".[dev]" && pytest
        ```

        ```console
        $ metabench episodes verify episodes.json
        ok episodes.json: every rule holds
        ```

        <!-- synopsis -->
        ```text
        metabench check --baseline FILE [--run RUN_ID ... | --config CONFIG.toml|NAME] [--tolerance T]
        metabench --verbose COMMAND ...
        ```
        """)
    assert [block.lang for block in blocks] == ["bash", "console", "text"]
    assert [block.runs for block in blocks] == [False, True, False]
    assert blocks[0].not_run == "trains for minutes" and blocks[2].synopsis
    for block in blocks:
        assert not static_errors(block), static_errors(block)


BROKEN_RUNS = {
    "failing-command": """
        ```bash
        metabench run quickstart --set train.no_such_key=1 --print-config
        ```
        """,
    "failing-python": """
        ```python
        raise SystemExit("this sample is broken")
        ```
        """,
    "missing-file": """
        ```bash
        python -c "import json; json.load(open('run.json'))"
        ```
        """,
}


@pytest.mark.parametrize("name", sorted(BROKEN_RUNS))
def test_run_fails_on_a_broken_sample(name, tmp_path):
    done = run_blocks(fake_page(BROKEN_RUNS[name]), tmp_path)
    assert done.returncode != 0, f"the {name} sample ran without an error"
    assert "@@ sample fake.md:" in done.stderr


def test_run_carries_files_and_variables_from_block_to_block(tmp_path):
    blocks = fake_page("""
        <!-- file: pkg/settings.toml -->
        ```toml
        answer = 42
        ```

        ```bash
        ANSWER=$(python -c "import tomllib; print(tomllib.load(open('pkg/settings.toml', 'rb'))['answer'])")
        ```

        ```python
        from pathlib import Path
        Path("seen.txt").write_text("python ran")
        ```

        ```bash
        test "$ANSWER" = 42 && test -f seen.txt
        ```

        <!-- not-run: would fail -->
        ```bash
        false
        ```
        """)
    done = run_blocks(blocks, tmp_path)
    assert done.returncode == 0, failure(done)
