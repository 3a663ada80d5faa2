"""The shipped systemd unit passes ``systemd-analyze verify`` and ``security`` cleanly.

Both run client-side, without systemd as PID 1. ``verify`` fails when an
``Exec*=`` binary does not exist, so the test checks a temporary copy whose
``/opt/sluice/bin/sluice`` is rewritten to this checkout's ``.venv/bin/sluice``
(or ``sys.executable`` when the console script is not installed). A misspelt
key only *warns* (exit code 0), so any stderr output fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_proc import REPO

UNIT = REPO / "systemd" / "sluice.service"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

pytestmark = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is not installed (.ci/install-system-deps)"
)


def _unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    entry = REPO / ".venv" / "bin" / "sluice"
    binary = str(entry if entry.exists() else Path(sys.executable))
    source = UNIT.read_text() if text is None else text
    unit = tmp_path / "sluice.service"
    unit.write_text(source.replace("/opt/sluice/bin/sluice", binary))
    return unit


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_verify_is_clean(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    r = _analyze("verify", "--man=no", f"./{unit.name}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_verify_catches_a_misspelt_key(tmp_path: Path) -> None:
    # Proves the check above can fail: systemd only warns about this one.
    broken = UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs=")
    unit = _unit_copy(tmp_path, broken)
    r = _analyze("verify", "--man=no", f"./{unit.name}", cwd=tmp_path)
    assert "NoNewPrivilegs" in r.stderr


def test_security_exposure_is_low_and_silent(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    # --threshold is exposure x 10: fail above 2.0 ("OK" is below 4.0).
    r = _analyze("security", "--offline=yes", "--threshold=20", f"./{unit.name}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr
    assert "Overall exposure level for sluice.service" in r.stdout


def test_unit_has_what_the_issue_asks_for() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/opt/sluice/bin/sluice check -c ${SLUICE_CONFIG}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=sluice",
        "StateDirectory=sluice",
        "ConfigurationDirectory=sluice",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "#LoadCredential=",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "RestartPreventExitStatus=78",
    ):
        assert f"\n{line}" in text, line
    sysusers = (REPO / "systemd" / "sluice.sysusers").read_text()
    assert 'u sluice - "Sluice mail relay" /var/lib/sluice' in sysusers
