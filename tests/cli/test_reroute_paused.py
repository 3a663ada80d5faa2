"""``sluice queue reroute --via`` a paused provider is done, with a warning that says so.

A reroute's recipients go through that provider only at their next attempt;
while it is paused they wait. The operator may mean it (the pause ends soon),
so it is not refused, but it must not look like mail is on its way.
Real CLI subprocesses on a real spool (the controls need no daemon).
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import fast_config, write_config
from tests.daemon_proc import run_cli


def _config(tmp_path: Path) -> str:
    providers = [
        {"id": "main", "host": "127.0.0.1", "port": 2, "encryption": "none"},
        {"id": "other", "host": "127.0.0.1", "port": 3, "encryption": "none"},
    ]
    return str(write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, providers)))


async def test_reroute_via_a_paused_provider_warns(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    rc, out, err = await run_cli(
        "providers", "pause", "other", "--reason", "incident 42", "-c", cfg
    )
    assert rc == 0, err

    warning = (
        "sluice: warning: provider other is paused (incident 42) until resumed: the rerouted "
        "recipients wait for it (`sluice providers resume other`)"
    )
    for dry in ((), ("--dry-run",)):
        rc, out, err = await run_cli("queue", "reroute", "--all", "--via", "other", *dry, "-c", cfg)
        assert rc == 0, err
        assert "reroute" in out and warning in err, (out, err)

    # Via a provider that is not paused: no warning.
    rc, out, err = await run_cli("queue", "reroute", "--all", "--via", "main", "-c", cfg)
    assert rc == 0 and err == "", err

    # A pause of every provider covers it too.
    rc, _, err = await run_cli("providers", "pause", "--all", "--for", "1h", "-c", cfg)
    assert rc == 0, err
    rc, out, err = await run_cli("queue", "reroute", "--all", "--via", "main", "-c", cfg)
    assert rc == 0
    assert "sluice: warning: all providers are paused until " in err
    assert "(`sluice providers resume --all`)" in err
