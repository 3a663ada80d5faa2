"""The config loader's bounds sit exactly where ``relay.config`` says, and only there.

Each bound is tried at its value (accepted by the YAML stage: any issue is a
different one) and one past it (refused with ``FILE:LINE: key: message``), so a
bound that drifts, or one that refuses a fair file, fails here. The numbers are
literal on purpose: they are a promise written in docs and messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config
from relay.config import load, loads
from relay.errors import ConfigError

GOOD = """\
spool:
  path: spool.sqlite3
admin:
  enabled: false
providers:
  - id: main
    host: smtp.example.com
"""


@pytest.fixture(autouse=True, params=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every bound holds on both parsers the loader may sit on (libyaml is optional)."""
    if request.param == "libyaml" and not config._WITH_LIBYAML:
        pytest.skip("this PyYAML is built without libyaml")
    monkeypatch.setattr(config, "_WITH_LIBYAML", request.param == "libyaml")
    return str(request.param)


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="f.yaml", env={})
    return caught.value.issues


def test_nesting_of_64_levels_is_read_and_65_is_refused() -> None:
    # The outermost list is level 0 (a list document: refused later, as not a mapping).
    assert _issues("[" * 65 + "]" * 65) == ["f.yaml:1: (top level): expected a mapping of sections"]
    (issue,) = _issues("[" * 66 + "]" * 66)
    assert issue == f"f.yaml:1: {'.'.join(['0'] * 65)}: nested deeper than 64 levels"


def test_aliases_may_expand_to_10000_nodes_and_not_one_more() -> None:
    anchor = "a: &a [" + ",".join(["x"] * 99) + "]\n"  # the list and its items: 100 nodes
    ok = anchor + "b: [" + ",".join(["*a"] * 100) + "]\n"
    assert not any("aliases" in i for i in _issues(ok))
    (issue,) = _issues(anchor + "b: [" + ",".join(["*a"] * 101) + "]\n")
    assert issue.startswith("f.yaml:2: b.100: aliases expand to more than 10,000 nodes")


def test_a_file_may_hold_20000_nodes_and_not_one_more() -> None:
    # mapping + key + list = 3 nodes, then the items
    ok = "k: [" + "0," * 19_997 + "]\n"
    assert not any("values in one file" in i for i in _issues(ok))
    (issue,) = _issues("k: [" + "0," * 19_998 + "]\n")
    assert issue == "f.yaml:1: k.19997: more than 20,000 values in one file"


def test_a_file_of_1_mib_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    padding = 1024 * 1024 - len(GOOD.encode())
    path.write_text(GOOD + "#" * (padding - 1) + "\n", encoding="utf-8")
    assert [p.id for p in load(path, env={}).providers] == ["main"]
    path.write_text(GOOD + "#" * padding + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    (issue,) = caught.value.issues
    assert issue.startswith(f"{path}:1: (file): the file is larger than 1024 KiB")


def test_a_self_referencing_alias_is_refused_not_walked_forever() -> None:
    (issue,) = _issues("providers: &p\n  - *p\n")
    assert issue == "f.yaml:2: providers.0: the alias *p is inside its own anchor"


def test_standard_tags_are_read_and_others_are_refused() -> None:
    text = GOOD.replace(
        "host: smtp.example.com", "host: !!str smtp.example.com\n    port: !!int 25"
    )
    assert [p.port for p in loads(text, env={}).providers] == [25]
    issues = _issues(GOOD + "    helo: !!python/name:os.system\n    extra: !Ref x\n")
    assert issues == [
        "f.yaml:8: providers.0.helo: the tag 'python/name:os.system' is not allowed here",
        "f.yaml:9: providers.0.extra: the tag '!Ref' is not allowed here",
    ]
