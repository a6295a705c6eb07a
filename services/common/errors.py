"""The hub's exception tree. Catch ``MrhubError`` to catch anything the hub raises on purpose."""

from __future__ import annotations


class MrhubError(Exception):
    """Base of every error the hub raises deliberately."""


class ConfigError(MrhubError):
    """Settings or reference data (institutions, catalogue) are missing or wrong."""


class BrokerError(MrhubError):
    """The local broker could not be fetched, started, reached or stopped."""


class PortInUseError(BrokerError):
    """A port the broker needs is already taken."""

    def __init__(self, port: int, purpose: str) -> None:
        super().__init__(f"port {port} ({purpose}) is already in use on 127.0.0.1")
        self.port = port
        self.purpose = purpose


class KafkaUnavailableError(MrhubError):
    """Kafka did not answer or did not acknowledge in time; the caller may retry."""


class IdentifierError(MrhubError, ValueError):
    """An identifier (身份证, institution id, OID) is malformed or fails its checksum."""


class AuthenticationError(MrhubError):
    """No credential, or one that resolves to no institution."""


class AuthorizationError(MrhubError):
    """The institution may not do this (write as another, read outside its scope)."""
