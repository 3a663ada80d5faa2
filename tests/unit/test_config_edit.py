"""The YAML writer keeps the operator's file: only the edited lines change, byte for byte.

Each test reads a real file, edits it through ``ConfigDocument`` and compares
the bytes written with the bytes read: every line outside the edit must be
the same (comments at every position, blank lines, quoting, flow style,
Windows line endings, a missing final newline). Keys behind anchors, aliases
and merge keys are refused with a reason. ``write_atomic`` refuses a stale
file with the difference; ``write_secret`` makes a 0600 file.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import loads
from relay.config_edit import (
    ConfigDocument,
    EditRefused,
    digest_of,
    write_atomic,
    write_secret,
)
from tests.layers import ROOT

# Comments at every position a file can have them: before the document, at
# the end of a key line, between keys, inside a list item, after a list, at
# different indentations, and at the very end.
TRICKY = """\
# head comment, before everything

# a second block after a blank line
smtp:   # after a section key
  # before a key
  listen: ["127.0.0.1:2525"]   # flow list, with a comment
  allowed_networks: [127.0.0.0/8, '::1/128']
  hostname: "relay.example.com"   # double-quoted
  bare_line_endings: 'reject'     # single-quoted

providers:
  # the first provider
  - id: main          # id comment
    host: smtp.example.com
    # between keys, indented
    port: 587
    username: 'app'
    password_env: SLUICE_MAIN_PASSWORD
    # commented-out example inside the item
    # daily_limit: 1000

  - {id: backup, host: backup.example.com, port: 25, encryption: none}   # a flow mapping

# the routes section's comment, owned by what follows
routes: []
# the very end
"""


def _changed_lines(before: str, after: str) -> list[str]:
    """The lines that differ, as unified-diff lines without headers ("-..." and "+...")."""
    return [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_unedited_round_trip_is_byte_identical() -> None:
    for text in (TRICKY, (ROOT / "config.example.yaml").read_text()):
        doc = ConfigDocument(text.encode())
        assert doc.render() == text


def test_setting_a_value_changes_only_its_line() -> None:
    doc = ConfigDocument(TRICKY.encode())
    doc.set(("providers", 0, "port"), 2525)
    out = doc.render()
    assert _changed_lines(TRICKY, out) == ["-    port: 587", "+    port: 2525"]


def test_quoting_and_flow_style_are_kept_when_edited() -> None:
    doc = ConfigDocument(TRICKY.encode())
    doc.set(("smtp", "hostname"), "mx.example.org")
    doc.set(("smtp", "bare_line_endings"), "accept")
    doc.set(("smtp", "listen"), ["127.0.0.1:2526"])
    out = doc.render()
    # ruamel keeps an end-of-line comment at its column: only the spaces before it may move.
    assert [" ".join(line.split()) for line in _changed_lines(TRICKY, out)] == [
        '- listen: ["127.0.0.1:2525"] # flow list, with a comment',
        '+ listen: ["127.0.0.1:2526"] # flow list, with a comment',
        '- hostname: "relay.example.com" # double-quoted',
        "- bare_line_endings: 'reject' # single-quoted",
        '+ hostname: "mx.example.org" # double-quoted',
        "+ bare_line_endings: 'accept' # single-quoted",
    ]
    assert yaml.safe_load(out)["smtp"]["listen"] == ["127.0.0.1:2526"]


def test_a_flow_mapping_item_is_edited_in_place() -> None:
    doc = ConfigDocument(TRICKY.encode())
    doc.set(("providers", 1, "port"), 2525)
    out = doc.render()
    changed = _changed_lines(TRICKY, out)
    assert len(changed) == 2
    assert changed[1].startswith("+  - {id: backup") and "port: 2525" in changed[1]
    assert yaml.safe_load(out)["providers"][1]["port"] == 2525


def test_a_new_key_goes_below_the_items_own_comments_and_above_the_next_sections() -> None:
    doc = ConfigDocument(TRICKY.encode())
    doc.set(("providers", 0, "daily_limit"), 500)
    out = doc.render()
    assert _changed_lines(TRICKY, out) == ["+    daily_limit: 500"]
    lines = out.splitlines()
    assert lines.index("    daily_limit: 500") == lines.index("    # daily_limit: 1000") + 1


def test_an_appended_provider_is_the_only_block_added() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    doc = ConfigDocument(text.encode())
    doc.append(
        ("providers",),
        {"id": "sg", "host": "smtp.sendgrid.net", "port": 587, "username": "apikey"},
    )
    out = doc.render()
    added = _changed_lines(text, out)
    assert added == [
        "+  - id: sg",
        "+    host: smtp.sendgrid.net",
        "+    port: 587",
        "+    username: apikey",
    ]
    # Above the next section's comment, not below it.
    assert out.index("  - id: sg") < out.index("# Routing (example)")
    cfg = loads(out, secrets=False)
    assert [p.id for p in cfg.providers] == ["main", "sg"]


def test_removing_a_provider_gives_back_the_file_it_was_added_to() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    doc = ConfigDocument(text.encode())
    doc.append(("providers",), {"id": "sg", "host": "smtp.sendgrid.net"})
    added = doc.render()
    again = ConfigDocument(added.encode())
    again.delete(("providers", 1))
    assert again.render() == text


def test_windows_line_endings_are_kept() -> None:
    crlf = TRICKY.replace("\n", "\r\n")
    doc = ConfigDocument(crlf.encode())
    assert doc.render() == crlf
    doc.set(("providers", 0, "port"), 465)
    out = doc.render()
    assert out == crlf.replace("port: 587", "port: 465")
    assert "\n" not in out.replace("\r\n", "")


def test_a_missing_final_newline_stays_missing() -> None:
    text = TRICKY.rstrip("\n")
    doc = ConfigDocument(text.encode())
    doc.set(("providers", 0, "host"), "smtp2.example.com")
    out = doc.render()
    assert out == text.replace("host: smtp.example.com", "host: smtp2.example.com")
    assert not out.endswith("\n")


ANCHORED = """\
defaults: &defaults   # shared settings
  port: 2525
  encryption: none
providers:
  - <<: *defaults
    id: a
    host: a.example.com
  - id: b
    host: b.example.com
    port: 25
    encryption: none
    username: &user shared-user
  - id: c
    host: c.example.com
    port: 25
    encryption: none
    username: *user
"""


def test_a_key_behind_a_merge_key_is_refused_with_the_reason() -> None:
    doc = ConfigDocument(ANCHORED.encode())
    with pytest.raises(EditRefused) as info:
        doc.set(("providers", 0, "port"), 587)
    assert "merge key" in info.value.message and "*defaults" in info.value.message
    assert doc.provenance(("providers", 0, "port")) is not None
    # An own key of the same item may change.
    doc.set(("providers", 0, "host"), "a2.example.com")
    assert "a2.example.com" in doc.render()


def test_an_anchored_or_aliased_value_is_refused_with_the_reason() -> None:
    doc = ConfigDocument(ANCHORED.encode())
    for loc in (("providers", 1, "username"), ("providers", 2, "username"), ("defaults", "port")):
        with pytest.raises(EditRefused) as info:
            doc.set(loc, "x")
        assert "anchor" in info.value.message
    assert doc.render() == ANCHORED


def test_provenance_names_where_a_value_comes_from(tmp_path: Path) -> None:
    text = TRICKY.replace("host: smtp.example.com", "host: ${SLUICE_HOST}")
    doc = ConfigDocument(text.encode())
    assert doc.provenance(("providers", 0, "host")) == "from the environment variable SLUICE_HOST"
    assert doc.provenance(("providers", 0, "password")) == (
        "from the environment variable SLUICE_MAIN_PASSWORD"
    )
    assert doc.provenance(("providers", 0, "port")) is None
    doc.delete(("providers", 0, "password_env"))
    assert doc.provenance(("providers", 0, "password")) == "from the systemd credential main"
    doc.set(("providers", 0, "password_file"), str(tmp_path / "secrets" / "main"))
    assert doc.provenance(("providers", 0, "password"), secrets_dir=tmp_path / "secrets") is None
    assert doc.provenance(("providers", 0, "password")) == (
        f"from the file {tmp_path / 'secrets' / 'main'}"
    )


def test_write_atomic_refuses_a_changed_file_with_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(TRICKY)
    path.chmod(0o640)
    doc = ConfigDocument.read(path)
    doc.set(("providers", 0, "port"), 2525)
    # Someone edits the file by hand meanwhile.
    hand = TRICKY.replace("host: smtp.example.com", "host: smtp.hand.example")
    path.write_text(hand)
    with pytest.raises(EditRefused) as info:
        write_atomic(path, doc.render(), expect_digest=doc.digest, base_text=doc.text)
    assert info.value.diff is not None
    assert "-    host: smtp.example.com" in info.value.diff
    assert "+    host: smtp.hand.example" in info.value.diff
    assert path.read_text() == hand
    # From the current file it works, and mode is kept.
    fresh = ConfigDocument.read(path)
    fresh.set(("providers", 0, "port"), 2525)
    new_digest = write_atomic(path, fresh.render(), expect_digest=fresh.digest)
    assert new_digest == digest_of(path.read_bytes())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_secret_makes_a_0600_file_with_exactly_the_value(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "secrets", "provider-sg-password", "s3cr3t value")
    assert path == (tmp_path / "secrets" / "provider-sg-password").absolute()
    assert path.read_bytes() == b"s3cr3t value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    write_secret(tmp_path / "secrets", "provider-sg-password", "rotated")
    assert path.read_bytes() == b"rotated"
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            write_secret(tmp_path / "secrets", bad, "v")


def test_pyyaml_style_lists_at_the_keys_column_are_kept() -> None:
    text = "providers:\n- id: a\n  host: a.example.com\n# trailing\nroutes: []\n"
    doc = ConfigDocument(text.encode())
    doc.append(("providers",), {"id": "b", "host": "b.example.com"})
    out = doc.render()
    assert _changed_lines(text, out) == ["+- id: b", "+  host: b.example.com"]


def test_lines_ruamel_would_respace_stay_as_written_unless_next_to_an_edit() -> None:
    text = (
        "smtp:\n"
        '  listen:   ["127.0.0.1:25"]\n'
        "  hostname:    relay.example.com\n"
        "providers:\n"
        "  - id: a\n"
        "    host: a.example.com\n"
        "    port: 25\n"
        "    encryption: none\n"
    )
    doc = ConfigDocument(text.encode())
    doc.set(("providers", 0, "port"), 2525)
    out = doc.render()
    assert _changed_lines(text, out) == ["-    port: 25", "+    port: 2525"]
    assert '  listen:   ["127.0.0.1:25"]\n  hostname:    relay.example.com\n' in out


def test_keys_set_one_by_one_on_an_appended_provider_stay_one_block() -> None:
    """As ``add_provider`` builds it: the id appended, then each field set."""
    text = (ROOT / "config.example.yaml").read_text()
    doc = ConfigDocument(text.encode())
    index = doc.append(("providers",), {"id": "sg"})
    for key, value in (("host", "smtp.sendgrid.net"), ("port", 587), ("username", "apikey")):
        doc.set(("providers", index, key), value)
    out = doc.render()
    assert _changed_lines(text, out) == [
        "+  - id: sg",
        "+    host: smtp.sendgrid.net",
        "+    port: 587",
        "+    username: apikey",
    ]
    assert out.index("    username: apikey") < out.index("# Routing (example)")


def test_a_comment_that_ends_the_file_stays_below_a_provider_built_key_by_key() -> None:
    text = "providers:\n  - id: a\n    host: a.example.com\n# the very end\n"
    doc = ConfigDocument(text.encode())
    index = doc.append(("providers",), {"id": "sg"})
    doc.set(("providers", index, "host"), "h.example.com")
    doc.set(("providers", index, "port"), 25)
    assert doc.render() == (
        "providers:\n  - id: a\n    host: a.example.com\n"
        "  - id: sg\n    host: h.example.com\n    port: 25\n# the very end\n"
    )


def test_a_comment_that_ends_the_file_stays_below_a_nested_key_made_by_an_edit() -> None:
    """``oauth2.client_id`` on a new provider: the mapping made for it goes above the comment."""
    text = "providers:\n  - id: a\n    host: a.example.com\n# the very end\n"
    doc = ConfigDocument(text.encode())
    index = doc.append(("providers",), {"id": "m365"})
    doc.set(("providers", index, "oauth2", "scope"), "SMTP.Send")
    doc.set(("providers", index, "oauth2", "client_id"), "c1")
    assert doc.render() == (
        "providers:\n  - id: a\n    host: a.example.com\n"
        "  - id: m365\n    oauth2:\n      scope: SMTP.Send\n      client_id: c1\n"
        "# the very end\n"
    )
    assert ("providers", index, "oauth2", "scope") in doc.changed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two users")
def test_the_lock_root_leaves_can_be_taken_by_the_daemons_user() -> None:
    """``sluice providers add`` as root, then the daemon (another user) saving the same file."""
    nobody = 65534
    # pytest's tmp_path is under a 0700 directory: the other user could not reach it.
    base = Path(tempfile.mkdtemp(prefix="sluice-lock-"))
    try:
        base.chmod(0o755)
        _lock_as_two_users(base, nobody)
    finally:
        shutil.rmtree(base)


def _lock_as_two_users(tmp_path: Path, nobody: int) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(TRICKY)
    os.chown(path, nobody, nobody)
    doc = ConfigDocument.read(path)
    doc.set(("providers", 0, "port"), 2525)
    write_atomic(path, doc.render(), expect_digest=doc.digest)
    lock = tmp_path / "sluice.yaml.lock"
    assert (lock.stat().st_uid, lock.stat().st_gid) == (nobody, nobody)
    assert (path.stat().st_uid, path.stat().st_gid) == (nobody, nobody)  # owner kept
    pid = os.fork()
    if pid == 0:  # the daemon's user takes the same lock
        code = 1
        try:
            os.setgid(nobody)
            os.setuid(nobody)
            fd = os.open(lock, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _scalar_locs(node: object, loc: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key path to a plain scalar (int, str, bool) in a loaded YAML tree."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _scalar_locs(v, (*loc, str(k)))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _scalar_locs(v, (*loc, i))]
    return [loc] if isinstance(node, int | str) and loc and isinstance(loc[-1], str) else []


def _plain_set(data: object, loc: tuple[str | int, ...], value: object) -> None:
    node: Any = data
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


@pytest.mark.parametrize("source", ["tricky", "example"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_edits_change_only_their_own_lines(source: str, data: st.DataObject) -> None:
    text = TRICKY if source == "tricky" else (ROOT / "config.example.yaml").read_text()
    expected = yaml.safe_load(text)
    locs = _scalar_locs(expected)
    chosen = data.draw(st.lists(st.sampled_from(locs), min_size=1, max_size=4, unique=True))
    doc = ConfigDocument(text.encode())
    for loc in chosen:
        value = data.draw(
            st.integers(1, 99999) | st.from_regex(r"[a-z][a-z0-9.]{0,15}", fullmatch=True)
        )
        doc.set(loc, value)
        _plain_set(expected, loc, value)
    out = doc.render()
    assert yaml.safe_load(out) == expected
    keys = {str(loc[-1]) for loc in chosen}
    for line in _changed_lines(text, out):
        # A changed line is an edited key's line (a flow mapping holds several keys).
        assert any(f"{key}:" in line for key in keys), line


def _only_own_lines_removed(text: str, out: str, keys: set[str]) -> str | None:
    """None when every removed line is a deleted key's, or a comment just above one.

    A comment right above a key describes it and goes with it; a comment below
    a deleted key is about what follows, and must stay. A line that only moved
    (an item's dash passed to its next key) counts as kept.
    """
    o, n = text.splitlines(), out.splitlines()
    removed: set[int] = set()
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, o, n, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            removed.update(range(i1, i2))
        if tag in ("insert", "replace"):
            added.extend(n[j1:j2])

    def bare(line: str) -> str:
        return line.strip().removeprefix("- ")

    moved = {bare(o[i]) for i in removed} & {bare(line) for line in added}

    def own(line: str) -> bool:
        return bare(line) in moved or "{" in line or any(f"{k}:" in line for k in keys)

    for i in sorted(removed):
        if own(o[i]):
            continue
        j = i
        while j < len(o) and (not o[j].strip() or o[j].strip().startswith("#")):
            j += 1
        if j < len(o) and j in removed and own(o[j]) and not own(o[i]):
            continue
        return f"line {i + 1} removed: {o[i]!r}"
    extra = [line for line in added if not own(line)]
    return f"added: {extra[0]!r}" if extra else None


@pytest.mark.parametrize("source", ["tricky", "example"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_deletions_keep_every_comment_about_what_follows(
    source: str, data: st.DataObject
) -> None:
    text = TRICKY if source == "tricky" else (ROOT / "config.example.yaml").read_text()
    expected = yaml.safe_load(text)
    chosen = data.draw(
        st.lists(st.sampled_from(_scalar_locs(expected)), min_size=1, max_size=3, unique=True)
    )
    doc = ConfigDocument(text.encode())
    done = []
    for loc in chosen:
        parent = doc.get(loc[:-1])
        if len(parent) == 1:
            continue  # a section left empty goes whole: its own test below
        doc.delete(loc)
        node: Any = expected
        for part in loc[:-1]:
            node = node[part]
        del node[loc[-1]]
        done.append(loc)
    out = doc.render()
    assert yaml.safe_load(out) == expected
    assert _only_own_lines_removed(text, out, {str(loc[-1]) for loc in done}) is None


def test_deleting_a_key_keeps_the_comment_below_it_for_the_next_key() -> None:
    doc = ConfigDocument(TRICKY.encode())
    doc.delete(("providers", 0, "host"))
    assert _changed_lines(TRICKY, doc.render()) == ["-    host: smtp.example.com"]


def test_a_section_left_empty_goes_whole() -> None:
    text = "log:\n  # the level\n  level: debug\n# next\nproviders:\n  - id: a\n    host: h\n"
    doc = ConfigDocument(text.encode())
    doc.delete(("log", "level"))
    out = doc.render()
    assert yaml.safe_load(out) == {"providers": [{"id": "a", "host": "h"}]}
    assert out.endswith("# next\nproviders:\n  - id: a\n    host: h\n")


def test_a_missing_mapping_set_key_by_key_stays_above_the_ending_comment() -> None:
    """``oauth2.client_id`` then ``oauth2.token_url`` on a new provider (the fix from h25-admin)."""
    text = "providers:\n  - id: a\n    host: a.example.com\n# the very end\n"
    doc = ConfigDocument(text.encode())
    index = doc.append(("providers",), {"id": "sg"})
    doc.set(("providers", index, "oauth2", "client_id"), "c")
    doc.set(("providers", index, "oauth2", "token_url"), "t")
    assert doc.render().endswith(
        "  - id: sg\n    oauth2:\n      client_id: c\n      token_url: t\n# the very end\n"
    )
