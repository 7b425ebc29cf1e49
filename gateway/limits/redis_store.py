"""Window counters in Redis: shared by every replica and worker (``limits.redis_url``).

Each window is one integer key, ``gateway:limits:<window key>``, that expires a minute after its
window ends. Leases and charges are Lua scripts, so a grant's read-compare-increment is atomic
across replicas; a round of grants, or of charges, is one script call for all its keys. The
``redis`` package is an optional dependency, imported here only (``configfile`` refuses
``redis_url`` without it).

Timeouts are short and the client does not retry by itself: a stopped Redis must be noticed in
about a second and handled by ``shared.SharedStore`` (local counters or 503, reconnect with backoff).
"""

from __future__ import annotations

from typing import Any

__all__ = ["KEY_PREFIX", "RedisCounters"]

KEY_PREFIX = "gateway:limits:"
EXPIRY_GRACE_MS = 60_000  # a replica whose clock is behind still finds the window it counts in
TIMEOUT = 1.0  # seconds for a connect or a command

# KEYS windows; ARGV limit, want, expire-at (ms) per key. Returns {granted, count after} per key.
GRANT = """
local out = {}
for i, key in ipairs(KEYS) do
  local used = tonumber(redis.call('GET', key) or '0')
  local granted = math.min(tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i - 2]) - used)
  if granted > 0 then
    used = redis.call('INCRBY', key, granted)
    if redis.call('PTTL', key) < 0 then redis.call('PEXPIREAT', key, ARGV[3 * i]) end
  else
    granted = 0
  end
  out[i] = {granted, used}
end
return out
"""

# KEYS windows; ARGV amount, expire-at (ms) per key. Returns the counts after.
ADD = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('INCRBY', key, ARGV[2 * i - 1])
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIREAT', key, ARGV[2 * i]) end
end
return out
"""


def _expire_ms(expires_at: float) -> int:
    return int(expires_at * 1000) + EXPIRY_GRACE_MS


class RedisCounters:
    """``SharedCounters`` over one Redis (``redis.asyncio``), with its scripts registered once."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        self._grant: Any = None
        self._add: Any = None

    async def connect(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis  # optional dependency: only with limits.redis_url

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, retry=None,
                health_check_interval=0, client_name="local-llm-gateway",
            )  # fmt: skip
            # EVALSHA, and SCRIPT LOAD again by itself after a Redis restart emptied its script cache.
            self._grant = self._client.register_script(GRANT)
            self._add = self._client.register_script(ADD)
        await self._client.ping()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def load(self, now: float) -> dict[str, tuple[int, float]]:
        keys = [k async for k in self._client.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        if not keys:
            return {}
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            values = await pipe.execute()
        out: dict[str, tuple[int, float]] = {}
        for i, key in enumerate(keys):
            count, ttl = values[2 * i], values[2 * i + 1]
            if count is not None and ttl > EXPIRY_GRACE_MS:
                name = key.decode() if isinstance(key, bytes) else key
                out[name.removeprefix(KEY_PREFIX)] = (int(count), now + (ttl - EXPIRY_GRACE_MS) / 1000)
        return out

    async def grant(self, items: list[tuple[str, int, int, float]]) -> list[tuple[int, int]]:
        args: list[int] = []
        for _, limit, want, expires_at in items:
            args += (limit, want, _expire_ms(expires_at))
        answers = await self._grant(keys=[KEY_PREFIX + key for key, _, _, _ in items], args=args)
        return [(int(granted), int(used)) for granted, used in answers]

    async def add(self, items: list[tuple[str, int, float]]) -> dict[str, int]:
        args: list[int] = []
        for _, amount, expires_at in items:
            args += (amount, _expire_ms(expires_at))
        counts = await self._add(keys=[KEY_PREFIX + key for key, _, _ in items], args=args)
        return {key: int(n) for (key, _, _), n in zip(items, counts, strict=True)}

    async def read(self, keys: list[str]) -> dict[str, int]:
        counts = await self._client.mget([KEY_PREFIX + key for key in keys])
        return {key: int(n or 0) for key, n in zip(keys, counts, strict=True)}

    async def prune(self, now: float) -> None:
        """Nothing to do: Redis expires every window key by itself."""
