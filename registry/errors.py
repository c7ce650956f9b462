"""The registry's one error type (in a module of its own so every other module may import it)."""

from __future__ import annotations


class RegistryError(Exception):
    """An answer in Confluent's error shape: HTTP status = the code's first three digits."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return self.code if self.code < 1000 else int(str(self.code)[:3])
