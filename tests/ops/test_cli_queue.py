"""`sluice queue ...` and `sluice check` as a user runs them, beside a running daemon."""

from __future__ import annotations

import json
from pathlib import Path

from relay.model import RecipientStatus
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send, write_config
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream


async def test_queue_commands_while_the_daemon_runs(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["RCPT"] = "451 4.2.0 Not now"
    async with sluice(
        [provider_for(upstream)], retry={"first_delay": "1h", "max_delay": "1h"}
    ) as s:
        cfg = str(s.config_path)
        _, reply = await smtp_send(
            s.port,
            "app@example.org",
            ["a@example.net", "b@example.net"],
            b"Subject: <stuck> mail\r\n\r\nbody\r\n",
        )
        qid = reply.rsplit(" ", 1)[-1]
        await eventually(lambda: _deferred(s, 2))

        code, out, _ = await run_cli("queue", "list", "-c", cfg)
        assert code == 0
        assert qid in out and "a@example.net" in out and "deferred" in out
        assert "451 4.2.0 Not now" in out

        code, out, _ = await run_cli("queue", "list", "-c", cfg, "--json")
        rows = json.loads(out)
        assert {r["email"] for r in rows} == {"a@example.net", "b@example.net"}
        assert all(r["attempts"] == 1 and r["subject"] == "<stuck> mail" for r in rows)

        code, out, _ = await run_cli("queue", "show", qid, "-c", cfg)
        assert code == 0
        assert "From:      <app@example.org>" in out and "Subject:   <stuck> mail" in out
        assert "deferred" in out and "via up1" in out

        code, out, _ = await run_cli("queue", "show", qid, "--raw", "-c", cfg)
        assert out.startswith("Received: from ") and "Subject: <stuck> mail" in out

        # retry now: the upstream accepts this time; the daemon picks it up.
        del upstream.reply["RCPT"]
        code, out, _ = await run_cli("queue", "retry", qid, "-c", cfg)
        assert code == 0 and "2 recipients due now" in out
        await upstream.wait_for(1)
        await s.wait_idle()

        code, out, _ = await run_cli("queue", "delete", qid, "-c", cfg)
        assert code == 0
        code, out, _ = await run_cli("queue", "list", "-c", cfg)
        assert qid not in out
        code, _, err = await run_cli("queue", "show", qid, "-c", cfg)
        assert code == 66 and "no message with queue ID" in err
        # The delivery log outlives the deleted message.
        assert len(await s.spool.list_log(search=qid)) == 4


async def _deferred(s: object, n: int) -> bool:
    counts = await s.spool.counts_by_status()  # type: ignore[attr-defined]
    return bool(counts[RecipientStatus.DEFERRED] == n)


async def test_check_accepts_a_good_config_and_names_lines_of_a_bad_one(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yaml", {"providers": [{"id": "p", "host": "h"}]})
    code, out, _ = await run_cli("check", "-c", str(good))
    assert code == 0 and "OK" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "smtp:\n  listen: ['127.0.0.1:25']\n  max_mesage_size: 1MiB\n"
        "providers:\n  - id: p\n    host: h\n    port: 99999\n"
    )
    code, _, err = await run_cli("check", "-c", str(bad))
    assert code == 78
    assert f"{bad}:3: smtp.max_mesage_size: unknown key" in err
    assert f"{bad}:7: providers.0.port:" in err
