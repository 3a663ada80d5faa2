"""The bounce mailbox against a real IMAP server: a private Dovecot on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import imapclient
import pytest
import trustme

from relay.bounces.mailbox import PROCESSED, Mailbox, MailboxError
from relay.bounces.poller import BouncePoller
from relay.config import Config, MailboxSettings, loads
from relay.store.spool import Spool
from tests.bounces.genuine import about, delivered
from tests.bounces.mailhost import Dovecot, dovecot
from tests.conftest import eventually

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
PASSWORD = "b0unce-pw"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"\n", b"\r\n")


@pytest.fixture
async def imap() -> AsyncIterator[Dovecot]:
    async with dovecot({"bounces": PASSWORD}) as server:
        yield server


def mailbox_settings(server: Dovecot, **extra: Any) -> MailboxSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "encryption": "none",
        "username": "bounces",
        "password": PASSWORD,
    }
    return MailboxSettings.model_validate({**base, **extra})


def config_with(box: MailboxSettings, tmp_path: Path, **bounces: Any) -> Config:
    cfg = loads(
        "providers: [{id: p, host: 127.0.0.1, port: 2525, encryption: none}]\n",
        env={},
        secrets=False,
    )
    return cfg.model_copy(
        update={
            "bounces": cfg.bounces.model_copy(update={"mailbox": box, **bounces}),
        }
    )


async def append(server: Dovecot, *messages: bytes, folder: str = "INBOX") -> None:
    def put() -> None:
        with imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False) as c:
            c.login("bounces", PASSWORD)
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for m in messages:
                c.append(folder, m)

    await asyncio.to_thread(put)


async def flags_in(server: Dovecot, folder: str = "INBOX") -> list[tuple[bytes, ...]]:
    def read() -> list[tuple[bytes, ...]]:
        with imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False) as c:
            c.login("bounces", PASSWORD)
            c.select_folder(folder, readonly=True)
            got = c.get_flags(c.search(["ALL"]))
            return [got[u] for u in sorted(got)]

    return await asyncio.to_thread(read)


async def test_folders_and_a_wrong_password(imap: Dovecot) -> None:
    await append(imap, fixture("gmail.eml"), folder="Bounces")

    def folders(box: MailboxSettings, password: str) -> list[str]:
        with Mailbox(box, password=password) as mb:
            return mb.folders()

    box = mailbox_settings(imap)
    assert {"INBOX", "Bounces"} <= set(await asyncio.to_thread(folders, box, PASSWORD))
    with pytest.raises(MailboxError, match="login as bounces failed"):
        await asyncio.to_thread(folders, box, "wrong")


async def test_implicit_tls_with_the_servers_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with dovecot({"bounces": PASSWORD}, tls=ca) as server:
        box = mailbox_settings(server, encryption="tls", ca_file=str(ca_file))

        def folders() -> list[str]:
            with Mailbox(box, password=PASSWORD) as mb:
                return mb.folders()

        assert "INBOX" in await asyncio.to_thread(folders)
        # Without the test CA the certificate is refused: verification is on.
        plain = mailbox_settings(server, encryption="tls")
        with pytest.raises(MailboxError, match=r"cannot connect|CERTIFICATE_VERIFY_FAILED"):
            await asyncio.to_thread(lambda: Mailbox(plain, password=PASSWORD).open())


def poller_for(spool: Spool, cfg: Config) -> BouncePoller:
    return BouncePoller(spool.suppressions, lambda: cfg)


async def test_poll_records_bounces_skips_the_rest_and_marks_everything(
    imap: Dovecot, tmp_path: Path
) -> None:
    garbage = b"\x00\xff" * 50 + b"\r\n\r\n" + bytes(range(256)) * 4
    huge = b"From: MAILER-DAEMON@x\r\nSubject: big\r\n\r\n" + b"y" * 300_000 + b"\r\n"
    box = mailbox_settings(imap, max_message_size=200_000)
    cfg = config_with(box, tmp_path, threshold=5)
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        # Bounces about mail this spool delivered (only those count).
        gmail, _ = await delivered(spool, "nobody.here@gmail.com")
        exim, _ = await delivered(spool, "olduser@example.com")
        await append(
            imap,
            about(fixture("gmail.eml"), gmail),
            about(fixture("exim.eml"), exim),
            fixture("out-of-office.eml"),
            garbage,
            huge,
        )
        poller = poller_for(spool, cfg)
        result = await poller.poll_once()
        assert result.fetched == 5
        assert result.bounces == 2
        assert result.not_bounces == 2  # the out-of-office reply and the garbage
        assert result.too_large == 1
        assert [b.kind for b in await spool.suppressions.bounces_of("nobody.here@gmail.com")] == [
            "hard"
        ]
        assert len(await spool.suppressions.bounces_of("olduser@example.com")) == 1
        # Everything read is marked and not read again.
        assert all(PROCESSED in f for f in await flags_in(imap))
        again = await poller.poll_once()
        assert again.fetched == 0
        assert poller.status.ok and poller.status.last_ok_at is not None


async def test_processed_bounces_move_to_the_named_folder(imap: Dovecot, tmp_path: Path) -> None:
    await append(imap, fixture("ses.eml"), fixture("qmail.eml"))
    box = mailbox_settings(imap, processed_folder="Processed")
    await append(imap, folder="Processed")  # the operator made the folder
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        result = await poller_for(spool, config_with(box, tmp_path)).poll_once()
    assert result.bounces == 2
    assert await flags_in(imap) == []
    assert len(await flags_in(imap, "Processed")) == 2


async def test_a_mailbox_that_is_down_backs_off_and_recovers(imap: Dovecot, tmp_path: Path) -> None:
    box = mailbox_settings(imap, poll_interval="1s")
    cfg_box: list[MailboxSettings] = [mailbox_settings(imap, port=1, poll_interval="1s")]
    async with await Spool.open(tmp_path / "s.sqlite3") as spool:
        current: Callable[[], Config] = lambda: config_with(cfg_box[0], tmp_path)  # noqa: E731
        poller = BouncePoller(spool.suppressions, current)
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        try:
            await eventually(lambda: poller.status.failures >= 1)
            assert "cannot connect" in poller.status.last_error
            assert poller.status.next_poll_at is not None
            gmail, _ = await delivered(spool, "nobody.here@gmail.com")
            await append(imap, about(fixture("gmail.eml"), gmail))
            cfg_box[0] = box  # the mailbox is back (here: the right port)
            # The next attempt comes after the back-off; then it is healthy again.
            await eventually(
                lambda: poller.status.ok and poller.status.last_ok_at is not None, within=20
            )
            assert len(await spool.suppressions.bounces_of("nobody.here@gmail.com")) == 1
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
