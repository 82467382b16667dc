"""Shared resources (settings, pool, Redis, queries) and how web and worker open and close them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web
from arq import ArqRedis
from arq import create_pool as create_redis_pool
from arq.connections import RedisSettings

from notifier.brand import BrandCache
from notifier.db import create_pool
from notifier.mail.render_pool import RenderPool
from notifier.settings import ConfigError, Settings, sentinel_hosts

log = logging.getLogger("notifier")

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", ArqRedis)
RENDER_POOL = web.AppKey("render_pool", RenderPool)
BRAND = web.AppKey("brand", BrandCache)


async def brand_ctx(app: web.Application) -> AsyncIterator[None]:
    """The web process's house style (notifier.brand): read at start-up, then again every
    REFRESH_SECONDS by a background task, so that a change saved in one process's console reaches
    the pages of every process."""
    cache = app[BRAND] = BrandCache(app[SETTINGS])
    await cache.refresh(app[POOL])

    async def keep_fresh() -> None:
        while True:
            await asyncio.sleep(cache.max_age)
            await cache.refresh(app[POOL])

    task = asyncio.create_task(keep_fresh())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def render_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The web process's RenderPool (its children start on the first render), closed on clean-up."""
    app[RENDER_POOL] = RenderPool(app[SETTINGS], brand=app[BRAND])
    try:
        yield
    finally:
        await app[RENDER_POOL].close()


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's RedisSettings from NOTIFIER_REDIS_URL, with a short connect retry for start-up."""
    _, redis_url = settings.require_services()
    if redis_url.startswith("redis+sentinel://"):
        hosts, master, database = sentinel_hosts(redis_url)
        password = urlsplit(redis_url).password
        rs = RedisSettings(
            host=hosts, sentinel=True, sentinel_master=master, database=database, password=password
        )
    else:
        rs = RedisSettings.from_dsn(redis_url)
    rs.conn_timeout = 5
    rs.conn_retries = 2
    rs.conn_retry_delay = 1
    return rs


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The asyncpg pool, or a ConfigError with one clear line when the database cannot be reached."""
    dsn, _ = settings.require_services()
    try:
        return await asyncio.wait_for(
            create_pool(
                dsn,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                statement_cache_size=0 if settings.db_transaction_pooling else 100,
            ),
            15,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise ConfigError(f"cannot connect to PostgreSQL at NOTIFIER_DATABASE_URL: {_reason(exc)}") from None


async def open_redis(settings: Settings) -> ArqRedis:
    """An arq Redis connection, or a ConfigError with one clear line."""
    try:
        return await create_redis_pool(redis_settings(settings))
    except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
        raise ConfigError(f"cannot connect to Redis at NOTIFIER_REDIS_URL: {_reason(exc)}") from None
    except Exception as exc:  # redis-py raises its own ConnectionError hierarchy
        if type(exc).__module__.startswith("redis"):
            raise ConfigError(f"cannot connect to Redis at NOTIFIER_REDIS_URL: {_reason(exc)}") from None
        raise


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Resources]:
    """Open pool and Redis for a CLI command and close both afterwards."""
    pool = await open_pool(settings)
    try:
        redis = await open_redis(settings)
        try:
            yield Resources(settings, pool, redis)
        finally:
            await redis.aclose()
    finally:
        await pool.close()
