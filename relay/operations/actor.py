"""Who acts (``Actor``), and how an operation refuses (``Refused``).

Every operation takes an actor: the spool's audit log names it, and some
choices follow from it (an address an app pushes through the API is stored
with the source ``api``; one an operator types, ``manual``).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from enum import StrEnum

from relay.errors import SluiceError

__all__ = ["Actor", "ActorKind", "Refusal", "Refused"]


class ActorKind(StrEnum):
    """The front-end an action came through."""

    #: ``sluice ...`` in an operator's shell
    CLI = "cli"
    #: the admin pages, by a logged-in operator (or with no password set)
    ADMIN = "admin"
    #: the JSON API with a bearer token: an app or a script
    API = "api"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: the front-end and a name (a Unix user, an admin user)."""

    kind: ActorKind
    name: str = ""

    @classmethod
    def cli(cls) -> Actor:
        """The operator running this ``sluice`` command (``$USER``; ``?`` if unknown)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "?"
        return cls(ActorKind.CLI, user)

    @property
    def audit(self) -> str:
        """How the spool's audit log names the actor: ``cli:alice``, ``alice``, ``api``."""
        if self.kind is ActorKind.CLI:
            return f"cli:{self.name}"
        if self.kind is ActorKind.API:
            return "api"
        return self.name or "admin"


class Refusal(StrEnum):
    """Why an operation refused, for a front-end to pick its answer (HTTP status, exit code)."""

    #: the input is wrong (400, EX_USAGE or EX_DATAERR)
    INVALID = "invalid"
    #: it names something that does not exist (404, EX_NOINPUT or EX_USAGE)
    NOT_FOUND = "not_found"
    #: it cannot be done in the current state (409)
    CONFLICT = "conflict"


class Refused(SluiceError, ValueError):
    """An operation was refused; ``str()`` is the one message every front-end shows."""

    def __init__(self, text: str, refusal: Refusal = Refusal.INVALID) -> None:
        super().__init__(text)
        self.refusal = refusal
