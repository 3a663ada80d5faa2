"""The suite on two pytest-xdist workers: what a worker may send back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.daemon_proc import REPO
from tests.workers import utf8_only

ARGS = "-q -rA -p no:cacheprovider -n 1 -p tests.workers test_raw.py"

#: a test that logs what a client sent that was not UTF-8, as the listener's tests do
_LOGS_RAW_BYTES = """
import logging

def test_logs_a_lone_surrogate():
    raw = b"\\xffbad".decode("utf-8", "surrogateescape")
    logging.getLogger("mail.log").warning("client sent %s", raw)
"""


def test_a_report_with_undecodable_bytes_comes_back_from_a_worker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_raw.py").write_text(_LOGS_RAW_BYTES)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *ARGS.split()],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        errors="replace",
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "INTERNALERROR" not in done.stdout
    assert "1 passed" in done.stdout
    # The controller shows the log line, the bad byte escaped.
    assert "client sent \\udcffbad" in done.stdout


def test_utf8_only_escapes_surrogates_and_keeps_everything_else() -> None:
    data = {"sections": [("Captured log", "caf\u00e9 \udcff")], "n": 1, "ok": None}
    assert utf8_only(data) == {
        "sections": [("Captured log", "caf\u00e9 \\udcff")],
        "n": 1,
        "ok": None,
    }
