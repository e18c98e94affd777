"""Kopf's real admission machinery served over real HTTP, without a cluster.

This is what ``kopf.operator()`` wires up for admission (its ``spawn_tasks``): the registry the
``@kopf.on.mutate`` decorator filled, ``serve_admission_request`` bound to settings, memories and
the operator memo, and ``kopf.WebhookServer`` (aiohttp) in front of it. Only the API discovery is
replaced: the pods resource is declared here instead of being scanned from an API server. The
EventStream lookup is a dictionary of real EventStream objects instead of GETs to an API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf
from kopf._cogs.structs import references
from kopf._core.engines import admission, indexing
from kopf._core.intents import registries
from kopf._core.reactor import inventory

from k1s0_operator import webhook
from k1s0_operator.injection import InjectionSettings

PODS = references.Resource(
    group="", version="v1", plural="pods", kind="Pod", singular="pod", namespaced=True, preferred=True,
    verbs=["create", "get", "list", "watch", "patch", "update", "delete"],
)


class Streams(dict[tuple[str, str], Mapping[str, Any]]):
    """EventStreams by (namespace, name); ``fail`` makes the lookup behave like an unreachable API."""

    fail: str | None = None

    async def lookup(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        if self.fail:
            raise webhook.LookupFailed(self.fail)
        return self.get((namespace, name))


@contextlib.asynccontextmanager
async def served_webhook(
    server: kopf.WebhookServer, streams: Streams, settings: InjectionSettings
) -> AsyncIterator[str]:
    """Serve the operator's admission handlers; yields the URL of ``/inject-sidecar``."""
    registry = registries.get_default_registry()
    insights = references.Insights()
    insights.webhook_resources.add(PODS)
    insights.ready_resources.set()
    fn = functools.partial(
        admission.serve_admission_request,
        settings=kopf.OperatorSettings(),
        memories=inventory.ResourceMemories(),
        memobase=kopf.Memo(stream_lookup=streams.lookup, injection_settings=settings),
        registry=registry,
        insights=insights,
        indices=indexing.OperatorIndexers().indices,
    )
    configs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def serve() -> None:
        async with server:
            async for client_config in server(fn):
                await configs.put(dict(client_config))

    task = asyncio.create_task(serve())
    try:
        getter = asyncio.ensure_future(configs.get())
        done, _ = await asyncio.wait({getter, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # re-raise why the server stopped
        if getter not in done:
            raise TimeoutError("the webhook server did not start")
        url = str(getter.result()["url"]).rstrip("/")
        yield f"{url}/{webhook.HANDLER_ID}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
