"""The store wing: the spool on disk, and the only code in Sluice that speaks SQL.

``spool`` (``Spool``, the facade every other part holds: it owns the
connections and the writer) and behind it one module per job: ``queue``,
``controls``, ``outbox``, ``views``, ``state``, ``suppressions``; then
``migrations`` (the numbered schema steps run on open), ``writer`` (the
group-commit writer thread and the WAL checkpointer), ``lock`` (the files
beside the spool that say which process owns it) and ``sql/`` (every
statement, named, in one file per job, and ``migrations/NNNN_*.sql``).
"""
