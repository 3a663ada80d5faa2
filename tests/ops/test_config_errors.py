"""Config mistakes are reported as ``FILE:LINE: dotted.key: message``, all at once.

Each case is a config file with one mistake; the line that ``load`` must
point at carries a ``# <-`` comment (or is given explicitly when the mistake
is the absence of something).
"""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.config import load
from relay.errors import ConfigError
from tests.conftest import provider_for
from tests.daemon_proc import REPO, DaemonProcess, run_cli
from tests.upstream import TestUpstream

BASE = """\
smtp:
  listen: ["127.0.0.1:2525"]
spool:
  path: spool.sqlite3
admin:
  enabled: false
providers:
  - id: main
    host: smtp.example.com
"""

# (case id, config text, dotted key, message fragment, line if not marked)
CASES: list[tuple[str, str, str, str, int | None]] = [
    (
        "unknown key",
        BASE + "  - id: backup\n    host: h\n    hots: x  # <-\n",
        "providers.1.hots",
        "unknown key",
        None,
    ),
    (
        "wrong type",
        BASE + "delivery:\n  max_concurrent: lots  # <-\n",
        "delivery.max_concurrent",
        "valid integer",
        None,
    ),
    (
        "bad duration",
        BASE + "retry:\n  first_delay: 5 minutes  # <-\n",
        "retry.first_delay",
        "is not a duration",
        None,
    ),
    (
        "bad worker count",
        BASE.replace("  listen:", "  workers: many  # <-\n  listen:"),
        "smtp.workers",
        "must be 'auto' or a number of processes from 0 to 64",
        None,
    ),
    (
        "bad size",
        BASE.replace("  listen:", "  max_message_size: 25 potatoes  # <-\n  listen:"),
        "smtp.max_message_size",
        "is not a size",
        None,
    ),
    (
        "out of range",
        BASE + "    port: 70000  # <-\n",
        "providers.0.port",
        "less than or equal to 65535",
        None,
    ),
    (
        "missing required key",
        BASE.replace("    host: smtp.example.com\n", "    caption: no host here\n").replace(
            "  - id: main", "  - id: main  # <-"
        ),
        "providers.0.host",
        "required key is missing",
        None,
    ),
    (
        "no providers at all",
        "smtp:\n  listen: ['127.0.0.1:2525']\n",
        "providers",
        "required key is missing",
        1,
    ),
    (
        "duplicate provider id",
        BASE + "  - id: main  # <-\n    host: other.example.com\n",
        "providers.1.id",
        "duplicate provider id 'main'",
        None,
    ),
    (
        "the only provider disabled",
        BASE + "    enabled: false  # <-\n",
        "providers.0.enabled",
        "the only provider can't be disabled",
        None,
    ),
    (
        "unknown route provider",
        BASE + "routes:\n  - sender_domain: [example.org]\n    providers: [nope]  # <-\n",
        "routes.0.providers.0",
        "unknown provider id 'nope'",
        None,
    ),
    (
        "YAML syntax error",
        BASE + "retry:\n  first_delay: [5s\n  max_delay: 1h\n",
        "(yaml)",
        "expected ',' or ']'",
        12,  # where the parser gave up: the flow list opened on line 11 never closed
    ),
    (
        "unset ${VAR}",
        BASE + "    username: ${SLUICE_TEST_SURELY_UNSET}  # <-\n",
        "providers.0.username",
        "${SLUICE_TEST_SURELY_UNSET} is not set",
        None,
    ),
    (
        "bad listen address",
        BASE.replace('["127.0.0.1:2525"]', '["localhost"]  # <-'),
        "smtp.listen.0",
        "is not host:port",
        None,
    ),
    (
        "bad network",
        BASE.replace("  listen:", "  allowed_networks: [10.0.0.0/33]  # <-\n  listen:"),
        "smtp.allowed_networks",
        "does not appear to be an IPv4 or IPv6 network",
        None,
    ),
    (
        "unreadable password_file",
        BASE + "    password_file: /nonexistent/sluice/pw  # <-\n",
        "providers.0.password_file",
        "cannot read /nonexistent/sluice/pw",
        None,
    ),
    (
        "unset password_env",
        BASE + "    password_env: SLUICE_TEST_SURELY_UNSET  # <-\n",
        "providers.0.password_env",
        "environment variable SLUICE_TEST_SURELY_UNSET is not set",
        None,
    ),
    (
        "empty password_file",
        BASE + "    username: relay\n    password_file: /dev/null  # <-\n",
        "providers.0.password_file",
        "/dev/null is empty; an empty secret is no secret",
        None,
    ),
    (
        "empty inline password",
        BASE + "    username: relay\n    password: ''  # <-\n",
        "providers.0.password",
        "is empty; an empty secret is no secret",
        None,
    ),
    (
        "username without a password or credential",
        BASE.replace("  - id: main", "  - id: main  # <-") + "    username: relay\n",
        "providers.0.password",
        "provider main has no password: give password_env or password_file, or the systemd "
        "credential 'main' (the unit's LoadCredential=main:/etc/sluice/credentials/main",
        None,
    ),
    (
        "empty admin api_token_file",
        BASE.replace("  enabled: false\n", "  enabled: false\n  api_token_file: /dev/null  # <-\n"),
        "admin.api_token_file",
        "/dev/null is empty",
        None,
    ),
    (
        "two password sources",
        BASE.replace("  - id: main", "  - id: main  # <-")
        + "    password: a\n    password_env: B\n",
        "providers.0",
        "give only one of password, password_env",
        None,
    ),
    (
        "bad enum value",
        BASE + "    encryption: ssl  # <-\n",
        "providers.0.encryption",
        "'none', 'starttls' or 'tls'",
        None,
    ),
    (
        "duplicate YAML key",
        BASE + "retry:\n  jitter: 0.1\nretry:  # <-\n  jitter: 0.2\n",
        "retry",
        "duplicate key (first given on line 10)",
        None,
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        "(top level)",
        "expected a mapping of sections",
        1,
    ),
]


def _expected_line(text: str, given: int | None) -> int:
    if given is not None:
        return given
    (line,) = [i for i, t in enumerate(text.splitlines(), 1) if "# <-" in t]
    return line


@pytest.mark.parametrize(
    ("text", "key", "fragment", "line"),
    [pytest.param(t, k, f, n, id=case) for case, t, k, f, n in CASES],
)
def test_mistake_is_reported_with_file_line_and_key(
    tmp_path: Path, text: str, key: str, fragment: str, line: int | None
) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    prefix = f"{path}:{_expected_line(text, line)}: {key}: "
    matching = [i for i in caught.value.issues if i.startswith(prefix)]
    assert matching, f"expected {prefix!r}…, got {caught.value.issues}"
    assert fragment in matching[0]


def test_all_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(
        BASE + "    port: 0\n    encryption: ssl\nretry:\n  first_delay: soon\nbogus: 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    keys = {issue.split(": ")[1] for issue in caught.value.issues}
    assert keys == {"providers.0.port", "providers.0.encryption", "retry.first_delay", "bogus"}


async def test_sluice_check_prints_every_issue_and_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(BASE + "    port: 70000\n    hots: x\n")
    rc, out, err = await run_cli("check", "-c", str(path))
    assert rc == 78
    assert f"{path}:10: providers.0.port:" in err
    assert f"{path}:11: providers.0.hots: unknown key" in err
    assert out == ""


# Config bombs: files a bad template or an attacker can write. Each must be answered by
# `sluice check` with exit 78 and FILE:LINE: key: message, quickly and without a traceback.
# (case id, file text, regex for the first issue after "FILE:")
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BOMBS = [
    ("billion laughs", LAUGHS, r"5: e\.0: aliases expand to more than 10,000 nodes"),
    (
        "2.5M-item list",
        BASE.replace("providers:", "routes: [" + "0," * 2_500_000 + "0]\nproviders:"),
        r"1: \(file\): the file is larger than 1024 KiB",
    ),
    (
        "over the size bound",
        BASE + "# padding\n" * (1024 * 1024 // 10),
        r"1: \(file\): the file is larger than 1024 KiB",
    ),
    (
        "list within the size bound past the node bound",
        BASE + "routes: [" + "0," * 400_000 + "0]\n",
        r"10: routes\.\d+: more than 20,000 values in one file",
    ),
    (
        "10,000-deep flow nesting",
        BASE + "routes: " + "[" * 10_000 + "]" * 10_000 + "\n",
        # libyaml (when PyYAML has it) stops past 1,000 levels itself, the composer at 64
        r"10: (routes(\.0){64}: nested deeper than 64 levels|\(yaml\): exceeded maximum nesting)",
    ),
    (
        "1,000-deep block nesting",
        BASE + "hold:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1000)),
        r"74: hold(\.k\d+){63}: nested deeper than 64 levels",
    ),
    (
        "python tag",
        BASE + 'routes: !!python/object/apply:os.system ["echo pwned"]\n',
        r"10: routes: the tag 'python/object/apply:os\.system' is not allowed here",
    ),
    (
        "an unknown local tag",
        BASE + "    port: !vault secret/smtp\n",
        r"10: providers\.0\.port: the tag '!vault' is not allowed here",
    ),
    (
        "recursive alias",
        BASE + "routes: &r [*r]\n",
        r"10: routes\.0: the alias \*r is inside its own anchor",
    ),
    (
        "control character",
        BASE + "    helo: a\x07b\n",
        r"10: \(yaml\): (special|control) characters are not allowed",  # PyYAML's | libyaml's
    ),
    (
        "thousands of unknown keys",
        BASE + "".join(f"k{i}: 1\n" for i in range(5000)),
        r"10: k0: unknown key",
    ),
    (
        "thousands of duplicate keys",
        BASE + "retry: {}\n" * 5000,
        r"11: retry: duplicate key \(first given on line 10\)",
    ),
]


def _sluice(command: str, path: Path) -> tuple[int, str, str, float]:
    """``sluice COMMAND -c PATH`` in a subprocess under 2 GiB of address space and a timeout.

    The limits keep a failing run (the loader before its bounds took minutes and
    gigabytes) from taking the machine with it; they end it as a failure instead.
    """

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "relay.cli", command, "-c", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            cwd=REPO,
            timeout=30,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"sluice {command} ran over 30 s")
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(t, e, id=case) for case, t, e in BOMBS]
)
def test_config_bomb_is_refused_quickly_with_file_line_and_exit_78(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(text, encoding="utf-8")
    rc, out, err, took = _sluice("check", path)
    assert "Traceback" not in err, err[-2000:]
    assert rc == 78, err[-2000:]
    assert out == ""
    first = err.splitlines()[0].removeprefix("sluice: ")
    assert re.fullmatch(re.escape(f"{path}:") + expected + ".*", first), first
    # Loose on purpose (a busy CI machine); before the bounds these took minutes.
    assert took < 5, f"{took:.1f} s"
    assert len(err.splitlines()) <= 101  # at most 100 issues, then a count of the rest


def test_anchors_within_the_bounds_still_repeat_provider_settings(tmp_path: Path) -> None:
    """Aliases are allowed (the bound is on what they expand to): ``<<: *main`` is fair use."""
    path = tmp_path / "sluice.yaml"
    path.write_text(
        BASE.removesuffix("  - id: main\n    host: smtp.example.com\n")
        + "  - &main\n    id: main\n    host: smtp.example.com\n    port: 2525\n"
        + "  - <<: *main\n    id: spare\n",
        encoding="utf-8",
    )
    cfg = load(path, env={})
    assert [(p.id, p.host, p.port) for p in cfg.providers] == [
        ("main", "smtp.example.com", 2525),
        ("spare", "smtp.example.com", 2525),
    ]


async def test_reload_with_a_bomb_is_refused_at_once_and_does_not_block_the_next(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    """A reload loads under a lock: before the bounds a billion laughs held it for minutes."""
    path = ops_config([provider_for(upstream)])
    good = path.read_text()
    d = await daemon_proc(path).start()

    path.write_text(LAUGHS)
    # Refused by the command before it signals (run in a thread: it has a timeout, run_cli not).
    rc, _out, err, _took = await asyncio.to_thread(_sluice, "reload", path)
    assert rc == 78
    assert f"{path}:5: e.0: aliases expand" in err
    mark = len(d.lines)
    d.send_signal(signal.SIGHUP)  # the daemon's own load, as systemd's ExecReload would
    await d.wait_line(f"reload rejected: {path}:5: e.0: aliases expand", start=mark, within=5)

    path.write_text(good)
    mark = len(d.lines)
    d.send_signal(signal.SIGHUP)
    await d.wait_line("configuration reloaded", start=mark, within=5)
    assert d.proc is not None and d.proc.returncode is None
    assert await d.stop() == 0
