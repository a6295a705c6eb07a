"""One settings object per process, read from ``MRHUB_*`` environment variables.

Nesting uses ``__``: ``MRHUB_KAFKA__BOOTSTRAP_SERVERS``, ``MRHUB_INGEST__PORT``. Secrets are
``SecretStr`` and have no default: a service that needs one refuses to start without it.
Read once at the entry point and passed down; nothing below reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.topics import RESOURCE_ACCEPTED


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "mrhub"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mrhub"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """Where the brokers are and how the hub talks to them."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="Comma-separated host:port list. Unset: `mrhub up` starts the local broker.",
    )
    replication_factor: int = Field(
        default=1,
        ge=1,
        description="Copies of each topic the hub creates (its topics, internal topics and "
        "table changelogs). Production: 3. `mrhub up` on a local cluster uses the cluster's "
        "(3 from three nodes) unless this is set.",
    )
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="`min.insync.replicas` of the topics the hub creates: how many copies an "
        "acks=all write needs before it is acknowledged. Unset: the brokers' default "
        "(a local cluster's is 2). Production: 2 with a replication factor of 3.",
    )
    request_timeout_ms: int = Field(default=15_000, ge=1_000)
    commit_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="The longest a worker leaves a source partition's Kafka transaction "
        "open while it has a backlog. Outputs become visible downstream only at a commit; "
        "with `commit_interval_min_s` set, a partition that is caught up commits sooner. "
        "Shorter costs more transactions per second, and under a backlog more CPU per "
        "record (docs/recognition.md).",
    )
    commit_interval_min_s: float | None = Field(
        default=0.05,
        gt=0,
        le=30,
        description="Adaptive commits (faust_fixes patch 14): the worker's commit timer ticks "
        "this often and commits the transaction of each source partition that is caught up "
        "(everything fetched processed, read to the partition's end); the others once "
        "`commit_interval_s` has passed since their last commit. 0.05 (the default) brought "
        "order → decision p99 from about 5 s to 0.63 s at 100 orders/s (`mrhub bench check`, "
        "docs/performance.md), for about a fifth more CPU per order. Set it equal to "
        "`commit_interval_s` for one fixed interval. An explicit value must not exceed "
        "`commit_interval_s`; the default follows a shorter `commit_interval_s`.",
    )
    producer_linger_ms: int = Field(
        default=100,
        ge=0,
        le=1000,
        description="How long a streaming worker's Kafka producer waits to fill a batch "
        "before sending it (aiokafka's linger_ms; Kafka Streams' default is 100 too). Every "
        "worker runs exactly_once: downstream reads a stage's output only once its "
        "transaction commits, and a commit sends whatever still lingers first, so a longer "
        "linger costs a record's way one produce round trip per hop, not the linger itself. "
        "100 ms instead of 5 took the patient index from about 1,050 to about 860 µs of CPU "
        "per record (fewer, fuller produce requests; docs/performance.md). 0 sends every "
        "message as soon as the sender is free: many small requests, each encoded in Python.",
    )
    client_id_prefix: str = "mrhub"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Kafka client of the hub talks to the brokers (docs/security.md).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, description="No default: a secret.")
    ssl_cafile: Path | None = Field(default=None, description="CA of the brokers' certificates.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Its private key.")

    @model_validator(mode="after")
    def _commit_intervals(self) -> KafkaSettings:
        if (
            self.commit_interval_min_s is not None
            and "commit_interval_min_s" in self.model_fields_set
            and self.commit_interval_min_s > self.commit_interval_s
        ):
            raise ValueError(
                f"MRHUB_KAFKA__COMMIT_INTERVAL_MIN_S ({self.commit_interval_min_s:g}) must not "
                f"exceed MRHUB_KAFKA__COMMIT_INTERVAL_S ({self.commit_interval_s:g})"
            )
        return self

    @property
    def commit_tick_s(self) -> float:
        """How often the commit timer ticks: ``commit_interval_min_s`` (at most
        ``commit_interval_s``), else the fixed ``commit_interval_s``."""
        if self.commit_interval_min_s is None:
            return self.commit_interval_s
        return min(self.commit_interval_min_s, self.commit_interval_s)

    @property
    def adaptive_commit_s(self) -> float | None:
        """The adaptive commits' shortest interval, or None when commits are one fixed
        interval (``commit_tick_s`` equals ``commit_interval_s``)."""
        tick = self.commit_tick_s
        return tick if tick < self.commit_interval_s else None


class BrokerSettings(_Frozen):
    """The local KRaft broker (or cluster) that `mrhub broker start` and `mrhub up` manage."""

    kafka_version: str = "3.9.1"
    nodes: int = Field(
        default=1,
        ge=1,
        le=9,
        description="Brokers of the local Kafka: 1, or a cluster (3: replication factor 3, "
        "min.insync.replicas 2). Node i listens on port + 2*(i-1).",
    )
    port: int = Field(default=9092, ge=0, le=65535, description="0 picks a free port.")
    controller_port: int = Field(default=9093, ge=0, le=65535, description="0 picks a free port.")
    data_dir: Path = Field(default_factory=lambda: _default_state_dir() / "broker")
    heap: str = "512m"
    start_timeout_s: float = 60.0


class ServiceSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class IngestSettings(ServiceSettings):
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    transaction_slots: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Kafka transactions in flight at once; requests queue behind them and "
        "share the next one (group commit). Fewer slots, bigger transactions; with one, the "
        "gateway idled while its only transaction committed (issue 15).",
    )
    topic: str = Field(
        default=RESOURCE_ACCEPTED.name,
        description="Where accepted resources go; only tests and staging change it.",
    )
    public_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="Where hospitals reach the hub (e.g. https://hub.example), used for "
        "Location headers and the CapabilityStatement; the request's Host header never is. "
        "Unset: Location is relative (/fhir/...).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request body (for $import: each line) may take to arrive, "
        "plus one second per min_body_rate bytes received; then 408 and the connection is "
        "closed.",
    )
    min_body_rate: int = Field(
        default=32 * 1024,
        ge=1,
        description="Bytes per second a sender must keep up for its body's deadline to grow "
        "with it: a slow link posting a large body is served, a trickle is cut off.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a request's line and headers may take to arrive once its first "
        "byte has; then the connection is closed.",
    )
    max_line_bytes: int = Field(
        default=8190, ge=256, description="Longest request line or header line."
    )
    max_field_bytes: int = Field(default=8190, ge=256, description="Longest header value.")
    max_headers: int = Field(default=64, ge=8, description="Most header fields in a request.")
    max_json_depth: int = Field(
        default=100, ge=8, le=500, description="Deepest JSON nesting of a body or NDJSON line."
    )
    max_outcome_issues: int = Field(
        default=100,
        ge=1,
        description="Issues listed in one OperationOutcome; one more issue counts the rest.",
    )
    validation_threads: int = Field(
        default=2,
        ge=1,
        le=32,
        description="Large bodies are parsed and validated off the event loop, at most this "
        "many at once (the others wait their turn).",
    )


class RecognitionSettings(ServiceSettings):
    port: int = Field(default=8081, ge=0, le=65535)
    url: str = Field(
        default="http://127.0.0.1:8081",
        description="Where the gateway reaches the recognition service for FHIR reads, "
        "decisions and CDS Hooks: one worker's base URL or a comma-separated list of every "
        "worker's (any worker answers, forwarding to the patient's owner; one that refuses "
        "the connection is skipped). `mrhub up` sets it.",
    )
    catalog_path: Path = Field(
        default=Path("config/catalog"),
        description="The recognition catalogue: one YAML file or a directory of them.",
    )


class ImagingSettings(ServiceSettings):
    port: int = Field(default=8082, ge=0, le=65535)
    check_endpoints: bool = Field(
        default=False,
        description="Ask each study's DICOMweb endpoint (QIDO-RS) whether it holds the study, "
        "once when the endpoint is indexed; the answer is shown, never awaited by ingestion.",
    )
    check_timeout_s: float = Field(default=5.0, gt=0, description="Per endpoint check.")
    audit_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a read waits for its audit record (acks=all)."
    )
    max_count: int = Field(default=200, ge=1, description="Largest page a search returns.")
    public_base_url: str | None = Field(
        default=None,
        description="The hub's address as hospitals reach it, for links and fullUrls in "
        "search answers (e.g. https://hub.example). Unset: http://<host>:<port> of the "
        "service itself. Never taken from a request's Host header.",
    )
    connector_token: SecretStr | None = Field(
        default=None,
        description="`mrhub connect`: the institution's bearer token for the gateway (or "
        "--token). No default.",
    )
    orthanc_password: SecretStr | None = Field(
        default=None, description="`mrhub connect orthanc --orthanc-user`: its password."
    )


class PatientIndexSettings(ServiceSettings):
    port: int = Field(default=8083, ge=0, le=65535)
    url: str = Field(
        default="http://127.0.0.1:8083",
        description="Where the other services reach the patient index to resolve a patient "
        "identifier to its master patient id: one worker's base URL or a comma-separated "
        "list of every worker's (any worker answers, forwarding to the owner; one that "
        "refuses the connection is skipped). `mrhub up` sets it.",
    )
    rules_path: Path = Field(
        default=Path("config/matching/rules-v2.yaml"),
        description="Matching rules (versioned data): fields, weights, blocking, thresholds.",
    )
    steward_token_hashes: tuple[str, ...] = Field(
        default=(),
        description="'sha256:<hex>' hashes of the data stewards' bearer tokens (JSON list); "
        "`mrhub stewards new-token` makes one. Empty: the steward API refuses every request.",
    )


class ConsoleSettings(ServiceSettings):
    """The console for people (services/console, docs/console.md)."""

    port: int = Field(default=8084, ge=0, le=65535)
    users_path: Path = Field(
        default=Path("config/console-users.yaml"),
        description="The console's people: name, role (steward, region, hospital), scope and "
        "an argon2 password hash; `mrhub console add-user` writes it. Reloaded when it changes.",
    )
    session_key: SecretStr | None = Field(
        default=None,
        description="32 bytes, url-safe base64 (a Fernet key): encrypts the session cookie. "
        "`mrhub console new-key` makes one; `mrhub up` keeps a local one. No default.",
    )
    steward_token: SecretStr | None = Field(
        default=None,
        description="The console's steward bearer token for the patient index (its hash must "
        "be in MRHUB_PATIENT_INDEX__STEWARD_TOKEN_HASHES); the person signed in is sent as "
        "X-Steward. `mrhub up` makes both. No default.",
    )
    secure_cookies: bool = Field(
        default=True,
        description="Mark the session cookie Secure (sent over HTTPS only). Turn off only for a "
        "console reached as http://127.0.0.1 on the same machine (`mrhub up` does).",
    )
    session_max_age_s: int = Field(
        default=8 * 3600, ge=60, description="A sign-in lasts this long (a working day)."
    )
    imaging_url: str = Field(
        default="http://127.0.0.1:8082", description="The imaging index, for a patient's studies."
    )
    ingest_url: str = Field(
        default="http://127.0.0.1:8080", description="The gateway, for its readiness."
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="Each call the console makes to a service."
    )


class IdentitySettings(_Frozen):
    hmac_key: SecretStr | None = Field(
        default=None,
        description="Key for the keyed hash of identifiers in Kafka keys and tables. No default.",
    )


class Settings(BaseSettings):
    """Everything a process may be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="MRHUB_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
    ingest: IngestSettings = IngestSettings()
    recognition: RecognitionSettings = RecognitionSettings()
    imaging: ImagingSettings = ImagingSettings()
    patient_index: PatientIndexSettings = PatientIndexSettings()
    console: ConsoleSettings = ConsoleSettings()
    identity: IdentitySettings = IdentitySettings()

    institutions_path: Path = Field(
        default=Path("config/institutions.yaml"),
        description="The institution registry every service reads (tokens, levels, regions, "
        "医联体, HR qualifications, read scope, each one's dicomweb_base); reloaded when it "
        "changes. ``MRHUB_INSTITUTIONS_PATH``.",
    )
    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The event loop every `mrhub serve` process runs on: uvloop (libuv, in C; "
        "faust's own supported choice, `mode.loop.use`) or the standard library's. uvloop "
        "takes 7–9 % off the patient index's CPU per record (docs/performance.md, "
        "issue 15, eighth session); `asyncio` is the fallback should a platform lack it. "
        "``MRHUB_EVENT_LOOP``.",
    )
    log_format: Literal["json", "console"] = "json"
    workers: int = Field(
        default=1,
        ge=1,
        le=16,
        description="`mrhub up`: processes per service (gateway, patient index, recognition, "
        "imaging); worker i of a streaming service listens on its port + 100*i, the gateways "
        "share theirs (docs/operations.md). ``MRHUB_WORKERS``; `up --workers` wins.",
    )
    topic_partitions: int = Field(
        default=6, ge=1, description="Partitions of the hub's main topics when it creates them."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_registry_path(cls, data: Any) -> Any:
        """The registry is one setting, ``MRHUB_INSTITUTIONS_PATH``. The per-service names it
        replaced (``MRHUB_INGEST__INSTITUTIONS_PATH`` and the like) are refused by name rather
        than ignored, so a deployment still setting one does not silently read the default."""
        if isinstance(data, dict):
            for section in ("ingest", "recognition", "imaging"):
                sub = data.get(section)
                if isinstance(sub, dict) and "institutions_path" in sub:
                    raise ValueError(
                        f"MRHUB_{section.upper()}__INSTITUTIONS_PATH is no longer read: the "
                        "institution registry is one file for every service, "
                        "MRHUB_INSTITUTIONS_PATH"
                    )
        return data


def load_settings() -> Settings:
    """Read the settings from the environment (call at the entry point only)."""
    return Settings()
