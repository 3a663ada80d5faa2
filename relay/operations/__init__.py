"""Operations: one typed function per operator or app action, the only way front-ends write.

The CLI (``relay.cli``), the admin pages and the JSON API (``admin``) are
adapters: they parse argv or a request, call a function here (or read a view
of the ``Spool``), and render its result. Each function takes typed input and
an ``Actor`` (who acts: ``relay.operations.actor``), checks what the store
cannot (a provider that exists, an address that is one), calls the store's
write method, and returns a frozen result that carries its own words (the
past tense of the action, counts, what was skipped and why). A refusal is
``Refused``, whose text every front-end shows as is: one check, one message.

The modules, by subject:

* ``actor``: who acts, and how a refusal is said;
* ``queue``: retry, delete, hold, release, reroute;
* ``providers``: pause, resume, and storing a provider's sign-in;
* ``config_edits``: add, edit, enable, disable and remove a provider, save the
  bounce settings: the config file edited, checked, written and reloaded;
* ``suppressions``: suppress, unsuppress, and the one CSV codec (import, export);
* ``testmail``: send a test message through one provider;
* ``sessions``: end every admin session.

Nothing is imported here, so that ``sluice`` loads only the operations a
command uses (its start-up time is felt at every call).
"""

from __future__ import annotations

__all__: list[str] = []
