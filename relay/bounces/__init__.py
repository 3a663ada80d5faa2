"""The bounces wing: what comes back after delivery.

``dsn`` reads a bounce (RFC 3464 reports, and other formats through Mailman's
``flufl.bounce``), (``relay.verp`` makes and reads the per-recipient return paths)
``mailbox`` speaks IMAP to the bounce mailbox (``imapclient``, in a worker
thread), and ``poller`` runs the polling loop the daemon starts. What a
bounce *does* (count towards the threshold, suppress an address) is the
store's (``relay.store.suppressions``).
"""
