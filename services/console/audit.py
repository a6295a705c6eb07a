"""Every view of a patient in the console is recorded on ``mrhub.audit.access-recorded.v1``
before the page is answered, like the services' reads (:mod:`services.common.audit`): the
reader is ``console:<person's name>``, the purpose ``console-view``, the route the page's
name, the master patient id and the institutions whose records the page showed. When the
record cannot be written (Kafka down, ``acks=all`` not reached in time) the page is not
shown: the view answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from services.common.audit import access_event
from services.common.kafka_security import aiokafka_options
from services.common.partitioner import PARTITIONER
from services.common.settings import Settings
from services.common.topics import ACCESS_RECORDED

__all__ = ["AuditLog", "AuditUnavailable"]

#: How long a page waits for its audit record.
AUDIT_TIMEOUT_S = 10.0


class AuditUnavailable(Exception):
    """The audit record was not written: the page must not be shown."""


class AuditLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    @property
    def ready(self) -> bool:
        return self.producer is not None

    async def start(self) -> None:
        if not self.settings.kafka.bootstrap_servers:
            return  # readyz says so; every patient page answers 503
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            partitioner=PARTITIONER,
            **aiokafka_options(self.settings.kafka),
        )
        await producer.start()
        self.producer = producer

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    async def viewed(
        self,
        *,
        person: str,
        page: str,
        master_patient_id: str | None,
        shown_institutions: Iterable[str],
        items: int,
        outcome: str = "shown",
    ) -> None:
        """Record that ``person`` viewed ``page`` about ``master_patient_id``; raise
        :class:`AuditUnavailable` when it could not be written."""
        if self.producer is None:
            raise AuditUnavailable("the audit producer is not running")
        reader = f"console:{person}"
        env = access_event(
            reader=reader,
            route=page,
            purpose="console-view",
            master_patient_id=master_patient_id,
            shown_institutions=shown_institutions,
            items=items,
            outcome=outcome,
        )
        try:
            await asyncio.wait_for(
                self.producer.send_and_wait(
                    ACCESS_RECORDED.name, env.to_bytes(), key=reader.encode(), headers=env.headers()
                ),
                timeout=AUDIT_TIMEOUT_S,
            )
        except Exception as exc:
            raise AuditUnavailable(str(exc) or type(exc).__name__) from exc
