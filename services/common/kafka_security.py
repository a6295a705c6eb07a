"""One set of TLS / SASL options for every Kafka client of the hub: faust workers, aiokafka
producers (gateway, audit, steward commands), kafka-python admin and readers.

Configured by ``MRHUB_KAFKA__SECURITY_PROTOCOL`` and its companions (docs/security.md). Each
client library spells the options its own way; this module is the one place that knows how.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context

from services.common.errors import ConfigError
from services.common.settings import KafkaSettings, Settings


@functools.cache
def _from_environment() -> KafkaSettings:
    return Settings().kafka


def _settings(kafka: KafkaSettings | None) -> KafkaSettings:
    return kafka if kafka is not None else _from_environment()


def _check(kafka: KafkaSettings) -> None:
    if kafka.security_protocol.startswith("SASL_"):
        _password(kafka)


def _password(kafka: KafkaSettings) -> str:
    if not (kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password):
        raise ConfigError(
            f"MRHUB_KAFKA__SECURITY_PROTOCOL={kafka.security_protocol} needs "
            "MRHUB_KAFKA__SASL_MECHANISM, MRHUB_KAFKA__SASL_USERNAME and "
            "MRHUB_KAFKA__SASL_PASSWORD"
        )
    return kafka.sasl_password.get_secret_value()


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for ``SSL`` / ``SASL_SSL`` (None otherwise)."""
    if not kafka.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    )
    return context


def aiokafka_options(kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer``."""
    kafka = _settings(kafka)
    _check(kafka)
    opts: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        opts["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = _password(kafka)
    return opts


def kafka_python_options(kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaAdminClient`` / ``KafkaConsumer`` /
    ``KafkaProducer``."""
    kafka = _settings(kafka)
    _check(kafka)
    opts: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.endswith("SSL"):
        opts["ssl_cafile"] = str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        opts["ssl_certfile"] = str(kafka.ssl_certfile) if kafka.ssl_certfile else None
        opts["ssl_keyfile"] = str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
    if kafka.security_protocol.startswith("SASL_"):
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = _password(kafka)
    return opts


def faust_credentials(kafka: KafkaSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust's ``broker_credentials`` (None for PLAINTEXT)."""
    _check(kafka)
    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=_password(kafka),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
