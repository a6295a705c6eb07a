"""Prometheus helpers shared by every service: one registry per process, build info."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "build_info", "exposition", "new_registry"]


def hub_version() -> str:
    try:
        return version("mrhub")
    except PackageNotFoundError:
        return "0+unknown"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def build_info(registry: CollectorRegistry, service: str) -> Gauge:
    g = Gauge(
        "mrhub_build_info",
        "Always 1; the labels say which build of which service is running.",
        ["service", "version", "python"],
        registry=registry,
    )
    g.labels(service, hub_version(), platform.python_version()).set(1)
    return g


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
