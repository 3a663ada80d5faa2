"""The outbound wing: from claimed mail to a provider's reply.

``scheduler`` (claims due mail and runs deliveries), ``providers`` (the
provider set: pools, health, limits), ``session`` (one SMTP connection and its
transactions), ``handshake`` (connect, TLS, EHLO, AUTH: once, shared with the
probe), ``replies`` (what a reply means: one table of rules), ``retry`` (the
back-off decision), ``routing``, ``health``, ``limits``, ``oauth`` and
``probe`` (``sluice providers test``).
"""
