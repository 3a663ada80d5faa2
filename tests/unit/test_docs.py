"""README and docs/ stay true where they can be checked: commands, configs, paths and links.

What a reader copies must work, and what a reader looks up must exist:

- every ``sluice ...`` line in a ```` ```sh ```` block parses with the real
  argument parser (``relay.cli.main.build_parser``; ``sluice sendmail`` and
  ``sendmail`` lines with ``relay.inbound.sendmail_args.parse_args``), and every
  ``sluice ...`` span in the text names real subcommands and options;
- every ```` ```yaml ```` block whose top-level keys are config sections is a
  valid (partial) config for ``relay.config.loads``: the snippet is completed
  with one provider when it has none, and secrets are not resolved (a snippet
  may name a password file that exists only on a server). A block with no
  config section at all (a Prometheus rule file) is not a config; one that mixes
  both is a misspelt section and fails;
- every repository path (``relay/...``, ``admin/...``, ``tests/...``) and every
  dotted module (``relay.x.y``) the docs name exists, and so does a named
  attribute (``relay.outbound.scheduler.batch_wait``) or test (``file::test``);
- every relative link resolves, ``#anchor`` included (GitHub's heading slugs).

Markdown is read with a few regular expressions rather than a Markdown library:
the docs use fenced blocks, inline code and ``[text](target)`` links only, and
a parser would add a dependency to read three constructs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from relay.cli.main import build_parser
from relay.config import SECRET_NAMES, Config, loads
from relay.errors import ConfigError
from relay.inbound.sendmail_args import UsageError
from relay.inbound.sendmail_args import parse_args as sendmail_parse_args
from tests.layers import ROOT

__all__: list[str] = []

#: What a newcomer reads: README and the house behind it.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Files whose links must resolve too (bench/HISTORY.md is a record of past rounds:
#: its paths may name modules that have moved since, its links may not break).
LINKED = [*DOCS, *sorted((ROOT / "bench").glob("*.md"))]
#: Files whose named paths must exist: everything but the history.
PATHS = [p for p in LINKED if p.name != "HISTORY.md"]

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_REPO_PATH = re.compile(r"(?<![\w./-])((?:relay|admin|tests|bench|systemd|docs|\.ci)/[\w./*-]*)")
_DOTTED = re.compile(r"(?<![\w./$-])([a-z][a-z_0-9]*(?:\.[a-z_0-9]+)+)(?![\w/-])")
_FILE_SUFFIXES = {"json", "py", "md", "yaml", "sql", "sqlite3", "toml", "svg", "txt", "csv", "eml"}
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
_OPERATOR_CHARS = set("&|;()<>")  # a token of only these separates commands (&&, |, ;, >)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _prose(text: str) -> str:
    """The text outside fenced blocks (so that inline spans are not read inside code)."""
    return _FENCE.sub("", text)


def blocks(paths: list[Path], lang: str) -> Iterator[Block]:
    for path in paths:
        text = path.read_text()
        for m in _FENCE.finditer(text):
            if m.group(1) == lang:
                yield Block(path, text.count("\n", 0, m.start()) + 2, lang, m.group(2))


# ------------------------------------------------------------------ commands


def shell_commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """Each simple command of a ``sh`` block as argv, heredoc bodies skipped."""
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        i += 1
        heredoc = _HEREDOC.search(line)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
            line = line[: heredoc.start()]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        argv: list[str] = []
        for token in lexer:
            if set(token) <= _OPERATOR_CHARS:
                if argv:
                    yield block.line + start, argv
                argv = []
            else:
                argv.append(token)
        if argv:
            yield block.line + start, argv


def sluice_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``sluice`` (or ``["sendmail", ...]`` for sendmail), else None."""
    words = list(argv)
    while words and (words[0] == "sudo" or re.fullmatch(r"\w+=\S*", words[0])):
        words.pop(0)
    if not words:
        return None
    name = words[0].rsplit("/", 1)[-1]
    if name == "sluice":
        return words[1:]
    if name == "sendmail":
        return ["sendmail", *words[1:]]
    return None


def parse_sluice(args: list[str]) -> str | None:
    """None if ``sluice ARGS`` parses as the real command would; else the error."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if args and args[0] == "sendmail":
                sendmail_parse_args(args[1:])
            else:
                build_parser().parse_args(args)
    except UsageError as exc:
        return str(exc)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return out.getvalue().strip() or f"exit {exc.code}"
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for block in blocks(DOCS, "sh"):
        for line, argv in shell_commands(block):
            args = sluice_argv(argv)
            if args is not None:
                found.append((f"{block.path.relative_to(ROOT)}:{line}", args))
    return found


def test_the_docs_show_sluice_commands_to_check() -> None:
    """The checks below would pass vacuously if the blocks were read wrong."""
    commands = doc_commands()
    assert len(commands) >= 10
    assert any(args[:2] == ["queue", "list"] for _, args in commands)
    assert any(args[:1] == ["sendmail"] for _, args in commands)


@pytest.mark.parametrize(("where", "args"), doc_commands(), ids=lambda v: str(v))
def test_every_sluice_command_in_a_shell_block_parses(where: str, args: list[str]) -> None:
    assert parse_sluice(args) is None, f"{where}: sluice {shlex.join(args)}"


def test_the_command_check_refuses_what_the_parser_refuses() -> None:
    assert parse_sluice(["queue", "list", "-c", "x.yaml"]) is None
    assert parse_sluice(["queue", "lsit"]) is not None
    assert parse_sluice(["queue", "list", "--colour"]) is not None
    assert parse_sluice(["sendmail", "-t", "-i"]) is None
    assert parse_sluice(["sendmail", "-Z"]) is not None
    text = "a && sluice check -c f # note\ncat <<'EOF'\nsluice nope\nEOF\n"
    block = Block(ROOT / "README.md", 1, "sh", text)
    assert [sluice_argv(a) for _, a in shell_commands(block)] == [None, ["check", "-c", "f"], None]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def span_problem(span: str) -> str | None:
    """What is wrong with an inline ``sluice ...`` span (subcommands and options), or None."""
    words = span.split()[1:]
    parser: argparse.ArgumentParser = build_parser()
    if words and words[0] == "sendmail":
        return None  # getopt-style options: the sendmail table is checked by its own tests
    path: list[str] = []
    for word in words:
        subs = _subcommands(parser)
        if subs is None or not re.fullmatch(r"[a-z][a-z-]*(\|[a-z][a-z-]*)*", word):
            break
        for name in word.split("|"):
            if name not in subs:
                return f"`sluice {' '.join([*path, name])}` is not a command"
        parser = subs[word.split("|")[0]]
        path.append(word)
    unknown = sorted(
        o
        for o in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words[len(path) :]))
        if o not in _options(parser) | {"-h", "--help"}
    )
    return f"`sluice {' '.join(path)}` has no {', '.join(unknown)}" if unknown else None


def doc_spans() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for m in _INLINE.finditer(_prose(path.read_text())):
            span = m.group(1).replace("\\|", "|")
            if span.startswith("sluice "):
                found.append((str(path.relative_to(ROOT)), span))
    return found


def test_every_sluice_span_in_the_text_names_real_commands_and_options() -> None:
    spans = doc_spans()
    assert len(spans) >= 20
    problems = [f"{where}: {p}" for where, span in spans if (p := span_problem(span))]
    assert problems == []


def test_the_span_check_sees_a_wrong_command_and_option() -> None:
    assert span_problem("sluice queue list [--status S] [--json]") is None
    assert span_problem("sluice suppression list|show") is None
    assert span_problem("sluice queue purge") is not None
    assert span_problem("sluice queue list --colour") is not None


# ------------------------------------------------------------------- configs

_SECTIONS = set(Config.model_fields)
_PROVIDER = "providers:\n  - id: docs\n    host: smtp.example.com\n"


def config_problem(text: str) -> str | None:
    """None if a ``yaml`` block is a valid config, or is no config at all; else why not."""
    data = yaml.safe_load(text)
    keys = set(data) if isinstance(data, dict) else set()
    if not keys & _SECTIONS:
        return None  # not a Sluice config (a Prometheus rule file, say)
    if keys - _SECTIONS:
        return f"not config sections: {sorted(keys - _SECTIONS)}"
    full = text if "providers" in keys else f"{text.rstrip()}\n{_PROVIDER}"
    try:
        loads(full, source="block", env={}, secrets=False, unset="empty")
    except ConfigError as exc:
        return "; ".join(exc.issues)
    return None


def doc_yaml() -> list[Block]:
    return list(blocks(DOCS, "yaml"))


def test_the_docs_show_config_snippets_to_check() -> None:
    assert sum(1 for b in doc_yaml() if set(yaml.safe_load(b.text)) & _SECTIONS) >= 1


@pytest.mark.parametrize("block", doc_yaml(), ids=str)
def test_every_config_snippet_validates(block: Block) -> None:
    assert config_problem(block.text) is None, str(block)


def test_the_config_check_refuses_a_wrong_snippet() -> None:
    assert config_problem("bounces:\n  threshold: 3\n") is None
    assert config_problem("groups:\n  - name: x\n") is None
    assert config_problem("bounces:\n  treshold: 3\n") is not None
    assert config_problem("bounce:\n  threshold: 3\nsmtp: {}\n") is not None


# --------------------------------------------------------------------- paths


def path_problem(name: str) -> str | None:
    """None if a repository path (``glob``, ``file::test``) named by the docs exists."""
    name = name.rstrip(".,:;)")
    file, _, test = name.partition("::")
    matches = sorted(ROOT.glob(file)) if "*" in file else [ROOT / file]
    if not any(m.exists() for m in matches):
        return f"{name}: no such file"
    defined = rf"^\s*(async )?def {re.escape(test)}\("
    if test and not re.search(defined, matches[0].read_text(), re.MULTILINE):
        return f"{name}: no test {test} in {file}"
    return None


def module_problem(dotted: str) -> str | None:
    """None if ``relay.x.y[.attr]`` is a module (and the attribute is in it)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            module = importlib.import_module(".".join(parts[:n]))
            rest = parts[n:]
            obj: object = module
            for attr in rest:
                if not hasattr(obj, attr):
                    return f"{dotted}: {'.'.join(parts[:n])} has no {attr}"
                obj = getattr(obj, attr)
            return None
    return f"{dotted}: no such module"


def doc_names(paths: list[Path]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        text = path.read_text()
        spans = [m.group(1) for m in _INLINE.finditer(_prose(text))]
        spans += [m.group(2) for m in _FENCE.finditer(text) if m.group(1) == "sh"]
        for span in spans:
            for m in _REPO_PATH.finditer(span):
                found.append((str(path.relative_to(ROOT)), f"path:{m.group(1)}"))
            for m in _DOTTED.finditer(span):
                if kind := dotted_kind(m.group(1)):
                    found.append((str(path.relative_to(ROOT)), f"{kind}:{m.group(1)}"))
    return found


def dotted_kind(dotted: str) -> str | None:
    """``module`` (``relay.x.y``), ``key`` (``smtp.listen``) or None (``bench.json``)."""
    first, second = dotted.split(".")[:2]
    if second in _FILE_SUFFIXES:
        return None
    if first in ("relay", "tests", "bench"):
        return "module"
    if first == "admin" and (ROOT / "admin" / f"{second}.py").is_file():
        return "module"
    return "key" if first in _SECTIONS else None


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The config section model in a field's type (``list[Provider] | None`` -> Provider)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (inner := _model_in(arg)) is not None:
            return inner
    return None


def key_problem(dotted: str) -> str | None:
    """None if ``section.key[.key]`` is a config key (``password_env`` for a secret too)."""
    model: type[BaseModel] | None = Config
    for i, part in enumerate(dotted.split(".")):
        if model is None:
            return f"{dotted}: {'.'.join(dotted.split('.')[:i])} has no keys"
        fields = model.model_fields
        base = re.sub(r"_(env|file)$", "", part)
        if part not in fields and not (base in fields and base in SECRET_NAMES):
            return f"{dotted}: no config key {part!r}"
        model = _model_in(fields[part].annotation) if part in fields else None
    return None


def test_every_path_module_and_config_key_the_docs_name_exists() -> None:
    names = doc_names(PATHS)
    assert len(names) >= 50
    assert sum(1 for _, n in names if n.startswith("key:")) >= 30
    problems = []
    for where, name in names:
        kind, _, what = name.partition(":")
        if kind == "module":
            problem = module_problem(what)
        elif kind == "key":
            problem = key_problem(what)
        else:
            problem = path_problem(what)
        if problem:
            problems.append(f"{where}: {problem}")
    assert problems == []


def test_the_path_check_sees_what_does_not_exist() -> None:
    assert path_problem("relay/message.py") is None
    assert path_problem("relay/store/sql/*.sql") is None
    assert path_problem("relay/no_such_module.py") is not None
    this = "tests/unit/test_docs.py::test_the_path_check_sees_what_does_not_exist"
    assert path_problem(this) is None
    assert path_problem("tests/unit/test_docs.py::test_nothing") is not None
    assert module_problem("relay.outbound.scheduler.batch_wait") is None
    assert module_problem("relay.no_such_module") is not None
    assert module_problem("relay.message.no_such_function") is not None
    assert key_problem("bounces.mailbox.folder") is None
    assert key_problem("admin.api_token_env") is None
    assert key_problem("smtp.max_mesage_size") is not None
    assert key_problem("delivery.batch_window.x") is not None
    assert dotted_kind("admin.listen") == "key" and dotted_kind("admin.guard") == "module"


# --------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+)$", _prose(path.read_text()), re.MULTILINE):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_problem(source: Path, target: str) -> str | None:
    if re.match(r"[a-z]+:", target):
        return None  # http:, https:, mailto:, file:
    file, _, anchor = target.partition("#")
    dest = (source.parent / file).resolve() if file else source
    if not dest.exists():
        return f"{target}: {file} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}"
    return None


def test_every_relative_link_resolves() -> None:
    problems = []
    count = 0
    for path in LINKED:
        for m in _LINK.finditer(_prose(path.read_text())):
            count += 1
            if problem := link_problem(path, m.group(1)):
                problems.append(f"{path.relative_to(ROOT)}: {problem}")
    assert count >= 20
    assert problems == []


def test_the_link_check_sees_a_broken_link_and_anchor() -> None:
    readme = ROOT / "README.md"
    assert link_problem(readme, "docs/operating.md#install-with-systemd") is None
    assert link_problem(readme, "docs/operating.md#no-such-heading") is not None
    assert link_problem(readme, "docs/nothing.md") is not None
    assert slug('About "bytes preserved"') == "about-bytes-preserved"
    assert slug("Using both cores: `smtp.workers`") == "using-both-cores-smtpworkers"


# -------------------------------------------------------------------- README


def test_readme_is_a_door_and_docs_is_the_house() -> None:
    """README: the two commands first, what Sluice is, promises, quick start, links."""
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("\n```\n", 1)[0]
    assert first_block.startswith("```sh\n") and len(first_block.splitlines()) == 3
    assert len(readme.split()) < 1200, "README is for five minutes: the rest goes to docs/"
    for doc in ("operating", "http-api", "architecture", "development"):
        assert f"(docs/{doc}.md)" in readme
    assert "minutes on 2 cores" in readme  # how long the second command takes


def test_readme_says_a_utf8_address_needs_smtputf8_with_the_listeners_reply() -> None:
    """Postfix takes a UTF-8 address without SMTPUTF8; Sluice refuses it: README warns."""
    from relay.inbound.listener import R_NEED_SMTPUTF8

    readme = " ".join((ROOT / "README.md").read_text().split())
    code = " ".join(R_NEED_SMTPUTF8.split()[:2])  # "553 5.6.7", what the client is answered
    assert f"without it the answer is `{code}`" in readme
    assert "needs the client to declare `SMTPUTF8` on `MAIL FROM`" in readme
