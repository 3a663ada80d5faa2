"""Notifications: DSNs to senders and webhook events, from outcomes the scheduler records.

A wing beside ``relay.outbound`` (it acts on what the spool recorded, never on
a delivery in flight): ``hook`` is what the scheduler calls around
``Spool.finish``, ``webhooks`` is the task that drains the outbox.
"""
