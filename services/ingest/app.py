"""Build the gateway's aiohttp application (no side effects until it runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.common.institutions import Registry
from services.common.topics import RESOURCE_ACCEPTED
from services.ingest import views
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import Publisher


def build_app(
    registry: Registry,
    *,
    bootstrap: str,
    hmac_key: bytes,
    max_body_bytes: int,
    publish_timeout_s: float = 10.0,
    transaction_slots: int = 1,
    topic: str = RESOURCE_ACCEPTED.name,
    institutions_path: Path | None = None,
) -> web.Application:
    """``institutions_path``: when given, the registry is reloaded from it whenever the file
    changes (checked at most once a second), so an issued or revoked token counts at once."""
    metrics = IngestMetrics()
    publisher = Publisher(
        bootstrap, topic, metrics, timeout_s=publish_timeout_s, slots=transaction_slots
    )
    gateway = views.Gateway(
        registry,
        publisher,
        metrics,
        hmac_key=hmac_key,
        max_body_bytes=max_body_bytes,
        institutions_path=institutions_path,
    )
    # aiohttp refuses larger bodies itself (its default is 1 MiB); NDJSON import streams.
    app = web.Application(client_max_size=max_body_bytes, middlewares=[views.observe])
    app[views.STATE_KEY] = gateway
    app.router.add_get("/fhir/metadata", views.metadata)
    app.router.add_post("/fhir/$import", views.post_import)
    app.router.add_post("/fhir", views.post_bundle)
    app.router.add_post("/fhir/", views.post_bundle)  # clients that join base + ""
    app.router.add_post("/fhir/{type}", views.post_resource)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)

    async def kafka(app: web.Application) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.stop()

    app.cleanup_ctx.append(kafka)
    return app
