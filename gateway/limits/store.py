"""The counter-store protocol (placeholder with the suggested shape; limits-core's is authoritative)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["CounterStore", "Window"]


@dataclass(frozen=True, slots=True)
class Window:
    key: str  # e.g. "rpm:alice:29012345" (kind, client, window index)
    limit: int  # > 0
    expires_at: float  # wall clock end of the window


class CounterStore(Protocol):
    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def try_take(self, w: Window, amount: int = 1) -> bool | None: ...
    async def take(self, w: Window, amount: int = 1) -> bool: ...
    def used(self, w: Window) -> int: ...
    def charge(self, w: Window, amount: int) -> None: ...
    def status(self) -> tuple[bool, str]: ...
