"""The admin web page (Starlette), served in-process by the daemon."""

__all__: list[str] = []
