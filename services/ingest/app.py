"""Build the gateway's aiohttp application (no side effects until it runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web

from services.common.fhir import DEFAULT_MAX_ISSUES
from services.common.institutions import Registry
from services.common.topics import RESOURCE_ACCEPTED, message_limit
from services.ingest import views
from services.ingest.metrics import IngestMetrics
from services.ingest.proxy import MAX_BODY_BYTES, Proxy
from services.ingest.publisher import Publisher


def build_app(
    registry: Registry,
    *,
    bootstrap: str,
    hmac_key: bytes,
    max_body_bytes: int,
    publish_timeout_s: float = 10.0,
    transaction_slots: int = 2,
    topic: str = RESOURCE_ACCEPTED.name,
    institutions_path: Path | None = None,
    max_message_bytes: int | None = None,
    body_timeout_s: float = 30.0,
    min_body_rate: int = 32 * 1024,
    max_json_depth: int = 100,
    max_outcome_issues: int = DEFAULT_MAX_ISSUES,
    public_base_url: str | None = None,
    validation_threads: int = 2,
    recognition_url: str | None = None,
    forward_headers: Mapping[str, str] | None = None,
    proxy_timeout_s: float = 10.0,
    proxy_max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """``institutions_path``: when given, the registry is reloaded from it whenever the file
    changes (checked at most once a second), so an issued or revoked token counts at once.
    ``max_message_bytes``: the Kafka message limit (default: derived from
    ``max_body_bytes``, as :func:`services.common.topics.max_message_bytes` does).
    ``recognition_url``: one recognition worker's base URL or a comma-separated list of
    every worker's (a worker that refuses the connection is skipped: services/ingest/proxy.py)."""
    metrics = IngestMetrics()
    proxy = (
        Proxy(
            recognition_url,
            forward_headers or {},
            timeout_s=proxy_timeout_s,
            max_body_bytes=proxy_max_body_bytes,
        )
        if recognition_url
        else None
    )
    publisher = Publisher(
        bootstrap,
        topic,
        metrics,
        timeout_s=publish_timeout_s,
        slots=transaction_slots,
        max_message_bytes=max_message_bytes or message_limit(max_body_bytes),
    )
    gateway = views.Gateway(
        registry,
        publisher,
        metrics,
        hmac_key=hmac_key,
        max_body_bytes=max_body_bytes,
        institutions_path=institutions_path,
        body_timeout_s=body_timeout_s,
        min_body_rate=min_body_rate,
        max_json_depth=max_json_depth,
        max_outcome_issues=max_outcome_issues,
        public_base_url=public_base_url,
        validation_threads=validation_threads,
        proxy=proxy,
    )
    # aiohttp refuses larger bodies itself (its default is 1 MiB); NDJSON import streams.
    app = web.Application(client_max_size=max_body_bytes, middlewares=[views.observe])
    app[views.STATE_KEY] = gateway
    app.router.add_get("/fhir/metadata", views.metadata)
    app.router.add_post("/fhir/$import", views.post_import)
    app.router.add_post("/fhir", views.post_bundle)
    app.router.add_post("/fhir/", views.post_bundle)  # clients that join base + ""
    app.router.add_post("/fhir/{type}", views.post_resource)
    # reads, searches and CDS Hooks: forwarded to recognition (services/ingest/proxy.py)
    app.router.add_get("/fhir/{type}", views.get_search)
    app.router.add_post("/fhir/{type}/_search", views.post_search)
    app.router.add_get("/fhir/{type}/{id}", views.get_read)
    app.router.add_get("/cds-services", views.cds_services)
    app.router.add_post("/cds-services/{id}", views.cds_services)
    app.router.add_post("/cds-services/{id}/feedback", views.cds_services)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)

    async def kafka(app: web.Application) -> AsyncIterator[None]:
        await publisher.start()
        if proxy is not None:
            await proxy.start()
        yield
        if proxy is not None:
            await proxy.close()
        await publisher.stop()
        gateway.close()

    app.cleanup_ctx.append(kafka)
    return app
