"""The store wing: the spool on disk, and the only code in Sluice that speaks SQL.

``spool`` (the store interface every other part uses), ``writer`` (the
group-commit writer thread and the WAL checkpointer), ``lock`` (the files
beside the spool that say which process owns it) and ``sql/`` (the schema and
the named queries).
"""
