"""The inbound wing: mail coming in from applications.

``listener`` (the SMTP handler and servers), ``aiosmtpd_seams`` (what it
overrides of aiosmtpd), ``data`` (reading DATA),
``workers`` (accept worker processes serving the daemon's sockets) and the
``sendmail`` entry point with its argument parser (``sendmail_args``). All of
them hand mail to the store and to nothing else.
"""
