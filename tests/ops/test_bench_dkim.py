"""``python -m bench dkim`` still measures: one tiny in-process run (bench/dkim.py)."""

from __future__ import annotations

from bench.dkim import run_dkim


async def test_bench_dkim_signs_every_case() -> None:
    report = await run_dkim(messages=2, sizes=(2048,))
    cases = {(c["algorithm"], c["size"] // 1000) for c in report["cases"]}
    assert cases == {("rsa", 1), ("ed25519", 1)}
    for case in report["cases"]:
        assert case["cpu_ms_per_msg"] > 0 and case["loop_stall_max_ms"] >= 0
    assert report["no_dkim_hook_ns"] > 0
