"""README's install steps, run for real: ``systemd/install.sh PREFIX`` into a temporary place.

The venv goes to a temporary PREFIX and the system files under ``DESTDIR``
(README's steps with / replaced). Then, as an operator would: the installed
``sluice check`` on the example config with a credential, ``systemd-analyze
verify`` and ``security`` on the installed unit (its ExecStart path exists:
the installed ``sluice``), and the installed ``sluice serve`` relaying one
message. What cannot run here is systemd as PID 1 starting the unit.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import fast_config, provider_for, smtp_send, write_config
from tests.daemon_proc import LISTENING, REPO
from tests.upstream import TestUpstream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCRIPT = REPO / "systemd" / "install.sh"
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
needs_analyze = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is not installed (.ci/install-system-deps)"
)


@dataclass(frozen=True)
class Installed:
    prefix: Path
    root: Path  # DESTDIR
    output: str

    @property
    def sluice(self) -> Path:
        return self.prefix / "bin" / "sluice"

    @property
    def unit(self) -> Path:
        return self.root / "etc" / "systemd" / "system" / "sluice.service"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "sluice" / "config.yaml"


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the checkout's venv and paths: as a fresh shell has it."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SLUICE_CONFIG", "CREDENTIALS_DIRECTORY"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def _system_python_fits() -> bool:
    """Whether /usr/bin/python3 (the script's default) is 3.11+ and can make a venv."""
    system = Path("/usr/bin/python3")
    if not system.exists():
        return False
    probe = "import sys, ensurepip; sys.exit(sys.version_info < (3, 11))"
    return subprocess.run([system, "-c", probe], capture_output=True, check=False).returncode == 0


def _python_env() -> dict[str, str]:
    """The script's default interpreter (the system's) where it fits; else the one CI runs.

    The test's own interpreter may live under root's home (pyenv here), which
    the script refuses, as the service could not run it.
    """
    return {} if _system_python_fits() else {"PYTHON": sys.executable}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    prefix, root = base / "opt" / "sluice", base / "root"
    proc = subprocess.run(
        ["sh", str(SCRIPT), str(prefix)],
        env=_clean_env(DESTDIR=str(root), **_python_env()),
        cwd=base,
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Installed(prefix, root, proc.stdout)


def test_readme_install_is_the_script_and_agrees_with_the_unit() -> None:
    readme = (REPO / "README.md").read_text()
    operating = (REPO / "docs" / "operating.md").read_text()
    section = operating[operating.index("## Install with systemd") :]
    assert "pip install mailsluice" not in readme + operating  # not published: it cannot resolve
    assert "\nsudo systemd/install.sh\n" in section
    assert "sudo apt-get install -y python3-venv" in section
    assert (
        "sudo CREDENTIALS_DIRECTORY=/etc/sluice/credentials /opt/sluice/bin/sluice check"
        " -c /etc/sluice/config.yaml"
    ) in section
    assert "sudo systemctl enable --now sluice" in section
    unit = (REPO / "systemd" / "sluice.service").read_text()
    assert "\nExecStart=/opt/sluice/bin/sluice serve -c ${SLUICE_CONFIG}\n" in unit
    assert "\nEnvironment=SLUICE_CONFIG=/etc/sluice/config.yaml\n" in unit
    # The script's default PREFIX is the one the unit names.
    assert "PREFIX=${1:-/opt/sluice}" in SCRIPT.read_text()
    # README's first command is still the demo from this checkout.
    assert readme.startswith(
        "```sh\npython3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/sluice demo\n"
        "bash .ci/run\n```\n"
    )


def test_install_lays_out_the_files(installed: Installed) -> None:
    assert installed.sluice.is_file() and os.access(installed.sluice, os.X_OK)
    link = installed.root / "usr" / "local" / "bin" / "sluice"
    assert link.is_symlink() and Path(os.readlink(link)) == installed.sluice
    unit = installed.unit.read_text()
    assert f"\nExecStart={installed.sluice} serve -c ${{SLUICE_CONFIG}}\n" in unit
    assert f"\nExecStartPre={installed.sluice} check -c ${{SLUICE_CONFIG}}\n" in unit
    assert "=/opt/sluice" not in unit
    assert (installed.prefix / "README.md").is_file()  # the unit's Documentation=
    for f, mode in (
        (installed.unit, 0o644),
        (installed.root / "usr/lib/sysusers.d/sluice.conf", 0o644),
        (installed.root / "usr/lib/tmpfiles.d/sluice.conf", 0o644),
        (installed.config, 0o660),
        (installed.config.parent, 0o770),
        # README's next step writes the provider's password there.
        (installed.root / "etc/sluice/credentials", 0o700),
    ):
        assert stat.S_IMODE(f.stat().st_mode) == mode, f
    assert installed.config.read_text() == (REPO / "config.example.yaml").read_text()


def test_installed_program_is_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    python = installed.prefix / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import relay, admin; print(relay.__file__, admin.__file__)"],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert str(REPO) not in out
    assert out.count(str(installed.prefix)) == 2, out


def test_installed_sluice_checks_the_example_with_a_credential(
    installed: Installed, tmp_path: Path
) -> None:
    # The example's provider is `main`; its password arrives as the unit would
    # hand it over (a credential file) and as the example's password_env names it.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "main").write_text("s3cret-from-credential\n")
    env = _clean_env(CREDENTIALS_DIRECTORY=str(credentials), SLUICE_MAIN_PASSWORD="s3cret-from-env")
    r = subprocess.run(
        [str(installed.sluice), "check", "-c", str(installed.config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert f"{installed.config}: OK (1 provider, enabled: main)" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr


@needs_analyze
def test_installed_unit_verifies_and_is_sandboxed(installed: Installed) -> None:
    cwd = installed.unit.parent
    r = subprocess.run(
        [ANALYZE, "verify", "--man=no", "./sluice.service"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    r = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", "./sluice.service"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr


@needs_analyze
def test_verify_fails_when_execstart_is_missing(installed: Installed, tmp_path: Path) -> None:
    # Proves the check above looks at the path: a unit naming no program fails.
    unit = tmp_path / "sluice.service"
    unit.write_text(installed.unit.read_text().replace(str(installed.prefix), str(tmp_path / "x")))
    r = subprocess.run(
        [ANALYZE, "verify", "--man=no", "./sluice.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 or r.stderr.strip() != ""


async def test_installed_sluice_serves_and_relays(
    installed: Installed, tmp_path: Path, upstream: TestUpstream
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        fast_config(tmp_path, [provider_for(upstream)], admin={"enabled": True}),
    )
    config.write_text(config.read_text().replace("listen: 127.0.0.1:8025", "listen: 127.0.0.1:0"))
    proc = await asyncio.create_subprocess_exec(
        str(installed.sluice),
        "serve",
        "-c",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        port = 0
        async with asyncio.timeout(60):
            while not any("sluice ready" in line for line in lines):
                raw = await proc.stderr.readline()
                assert raw, "the installed sluice exited:\n" + "\n".join(lines)
                lines.append(raw.decode(errors="replace"))
                if m := LISTENING.search(lines[-1]):
                    port = int(m.group(2))
        assert re.search(r"listening admin=127\.0\.0\.1:\d+", "".join(lines))
        await smtp_send(port, "app@example.org", ["you@example.net"], b"Subject: x\r\n\r\ny\r\n")
        (got,) = await upstream.wait_for(1)
        assert got.recipients == ["you@example.net"]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_running_it_again_upgrades_and_keeps_the_config(installed: Installed) -> None:
    # Last in this module: it re-runs the script over the shared installation.
    edited = installed.config.read_text() + "\n# edited by the operator\n"
    installed.config.write_text(edited)
    proc = subprocess.run(
        ["sh", str(SCRIPT), str(installed.prefix)],
        env=_clean_env(DESTDIR=str(installed.root), **_python_env()),
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"kept {installed.config}" in proc.stdout
    assert installed.config.read_text() == edited
    assert installed.sluice.is_file()


def test_a_relative_prefix_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", str(SCRIPT), "opt/sluice"],
        env=_clean_env(DESTDIR=str(tmp_path), PYTHON=sys.executable),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 64
    assert "PREFIX must be an absolute path" in proc.stderr
    assert not (tmp_path / "opt").exists()


def test_the_default_interpreter_is_the_systems_and_the_service_user_can_run_it(
    installed: Installed,
) -> None:
    base = os.readlink(installed.prefix / "bin" / "python3")  # python -> python3 -> base
    if _system_python_fits():
        assert base == "/usr/bin/python3", base
        assert "(on /usr/bin/python3" in installed.output
    if os.geteuid() == 0 and shutil.which("runuser"):
        # The interpreter the venv runs on is open to an unprivileged user, as the
        # unit's User= is. (The temporary PREFIX itself is not: pytest's tmp is 0700.)
        r = subprocess.run(["runuser", "-u", "nobody", "--", "test", "-x", base], check=False)
        assert r.returncode == 0, base


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as the service user needs root (runuser)")
@pytest.mark.skipif(not _system_python_fits(), reason="no /usr/bin/python3 3.11+ to link to")
def test_an_interpreter_under_a_closed_home_is_refused_with_the_reason_and_the_fix(
    tmp_path: Path,
) -> None:
    # As root's pyenv, asdf or conda Python: under a home directory only its owner
    # enters. A link to the system's interpreter, so that only the place differs.
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    home.chmod(0o700)
    python = home / "bin" / "python3"
    python.symlink_to(Path("/usr/bin/python3").resolve())
    prefix, root = tmp_path / "opt" / "sluice", tmp_path / "root"
    proc = subprocess.run(
        ["sh", str(SCRIPT), str(prefix)],
        env=_clean_env(DESTDIR=str(root), PYTHON=str(python), SLUICE_USER="nobody"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 69, proc.stdout + proc.stderr
    assert f"the service user (nobody) cannot execute {python}" in proc.stderr
    assert "Permission denied" in proc.stderr  # what the service would have met
    assert "use the system interpreter (PYTHON=/usr/bin/python3" in proc.stderr
    # Refused before anything was installed.
    assert not prefix.exists() and not root.exists()


_HOMES = ("/root/", "/home/", "/run/user/")
_OWN_BASE = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)


@pytest.mark.skipif(
    not _OWN_BASE.startswith(_HOMES), reason="this test's Python is not under a home directory"
)
def test_a_python_under_a_home_directory_is_refused_as_protecthome_hides_it(
    tmp_path: Path,
) -> None:
    # This test's own interpreter (root's pyenv, say): the unit's ProtectHome=yes hides it.
    prefix, root = tmp_path / "opt" / "sluice", tmp_path / "root"
    proc = subprocess.run(
        ["sh", str(SCRIPT), str(prefix)],
        env=_clean_env(DESTDIR=str(root), PYTHON=sys.executable),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 69, proc.stdout + proc.stderr
    assert f"runs {_OWN_BASE}, under a home directory" in proc.stderr
    assert "ProtectHome=yes hides it" in proc.stderr
    assert "use the system interpreter (PYTHON=/usr/bin/python3" in proc.stderr
    assert not prefix.exists() and not root.exists()
