"""``sluice queue list`` says when its list is cut at ``--limit`` (100 by default).

Three deferred recipients in a real spool (a real daemon, a real upstream
that defers), then ``queue list`` as an operator runs it.
"""

from __future__ import annotations

import json

from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream

CUT = "sluice: showing the newest 2 recipients; there are more (--limit N shows more"


async def test_a_cut_list_says_so_and_a_whole_one_does_not(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["RCPT"] = "451 4.2.0 Not now"
    async with sluice(
        [provider_for(upstream)], retry={"first_delay": "1h", "max_delay": "1h"}
    ) as s:
        await smtp_send(
            s.port,
            "app@example.org",
            ["a@example.net", "b@example.net", "c@example.net"],
            b"Subject: stuck\r\n\r\nbody\r\n",
        )
        cfg = str(s.config_path)

        async def three_deferred() -> bool:
            entries = await s.spool.list_queue(limit=10)
            return len(entries) == 3 and all(e.status.value == "deferred" for e in entries)

        await eventually(three_deferred)

        rc, out, err = await run_cli("queue", "list", "--limit", "2", "-c", cfg)
        assert rc == 0, err
        assert out.count("@example.net") == 2
        assert CUT in err

        rc, out, err = await run_cli("queue", "list", "--limit", "2", "--json", "-c", cfg)
        assert rc == 0 and len(json.loads(out)) == 2  # stdout stays JSON
        assert CUT in err

        rc, out, err = await run_cli("queue", "list", "--limit", "3", "-c", cfg)
        assert rc == 0 and out.count("@example.net") == 3
        assert err == ""

        rc, _, err = await run_cli("queue", "list", "--limit", "0", "-c", cfg)
        assert rc == 64 and "0 is less than 1" in err
