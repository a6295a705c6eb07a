"""``mrhub connect orthanc``: post every stable study of an Orthanc PACS to the gateway.

For a hospital whose PACS speaks DICOMweb but whose HIS does not speak FHIR. The connector
follows Orthanc's change feed (``GET /changes?since=N``); for each ``StableStudy`` it reads
the study, its series and their instances over DICOMweb (QIDO-RS), builds an R4
``ImagingStudy`` (:func:`services.imaging_index.dicom.imaging_study`) and posts it to the
gateway (``POST /fhir/ImagingStudy``) with the institution's token.

It remembers the last change it finished in a state file (written atomically after every
change) and resumes after it. A post the gateway cannot take now (503, 429, no answer) is
retried with backoff; if it still fails the connector stops *without* moving past the
change, so the next run posts it again (the hub drops the resend as a duplicate). A study
the gateway refuses (400, 422) is logged by its Orthanc id and skipped: it would be refused
again. A refused credential (401, 403) stops the connector.

Nothing here logs a patient identifier, a name or a UID: Orthanc ids and change numbers only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from services.common.errors import MrhubError
from services.common.identifiers import OUTPATIENT_NO_SYSTEM
from services.common.settings import Settings
from services.imaging_index import dicom

log = logging.getLogger("mrhub.connect")

FHIR_JSON = "application/fhir+json"
DICOM_JSON = "application/dicom+json"
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ConnectorError(MrhubError):
    """The connector cannot go on (bad credential, state file of another server…)."""


# ── state ───────────────────────────────────────────────────────────────────────────────


@dataclass
class State:
    """Where the connector stopped: the last Orthanc change it finished."""

    orthanc: str
    institution: str
    last_seq: int = 0


def default_state_path(settings: Settings, url: str, institution: str) -> Path:
    digest = hashlib.sha256(f"{url.rstrip('/')}|{institution}".encode()).hexdigest()[:16]
    return settings.state_dir / "connect" / f"orthanc-{digest}.json"


def load_state(path: Path, orthanc: str, institution: str) -> State:
    """The saved state, or a fresh one. Refuses a file written for another server or
    institution (resuming there would skip or repeat the wrong changes)."""
    orthanc = orthanc.rstrip("/")
    if not path.exists():
        return State(orthanc, institution)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        state = State(str(doc["orthanc"]), str(doc["institution"]), int(doc["last_seq"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConnectorError(f"{path}: not a connector state file ({exc})") from exc
    if (state.orthanc, state.institution) != (orthanc, institution):
        raise ConnectorError(
            f"{path} belongs to another Orthanc or institution; give another --state"
        )
    return state


def save_state(path: Path, state: State) -> None:
    """Write ``state`` atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ── metrics ─────────────────────────────────────────────────────────────────────────────


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lag = Gauge(
            "mrhub_imaging_connector_lag_changes",
            "Orthanc changes not yet processed (newest change number minus the last done).",
            registry=self.registry,
        )
        self.studies = Counter(
            "mrhub_imaging_connector_studies_total",
            "Stable studies handled, by outcome (posted, refused, skipped).",
            ["outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "mrhub_imaging_connector_retries_total",
            "Posts retried because the gateway was unavailable.",
            registry=self.registry,
        )


# ── the two servers ─────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Options:
    orthanc: str
    institution: str
    gateway: str
    token: str
    state_path: Path
    patient_system: str = OUTPATIENT_NO_SYSTEM
    dicomweb: str | None = None  # where the connector reads DICOMweb (default: …/dicom-web)
    endpoint: str | None = None  # the address posted as the endpoint (default: dicomweb)
    orthanc_auth: tuple[str, str] | None = None
    once: bool = False
    interval_s: float = 5.0
    batch: int = 100
    max_attempts: int = 8
    timeout_s: float = 30.0
    utc_offset: str = "+08:00"

    @property
    def dicomweb_root(self) -> str:
        return (self.dicomweb or f"{self.orthanc.rstrip('/')}/dicom-web").rstrip("/")


class Orthanc:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.http = httpx.Client(
            base_url=opts.orthanc.rstrip("/"), auth=opts.orthanc_auth, timeout=opts.timeout_s
        )
        self.dicomweb = httpx.Client(
            base_url=opts.dicomweb_root,
            auth=opts.orthanc_auth,
            timeout=opts.timeout_s,
            headers={"Accept": DICOM_JSON},
        )

    def close(self) -> None:
        self.http.close()
        self.dicomweb.close()

    def changes(self, since: int) -> tuple[list[dict[str, Any]], bool, int]:
        answer = self.http.get("/changes", params={"since": since, "limit": self.opts.batch})
        answer.raise_for_status()
        doc = answer.json()
        return list(doc.get("Changes") or []), bool(doc.get("Done")), int(doc.get("Last", since))

    def newest(self) -> int:
        answer = self.http.get("/changes", params={"last": ""})
        answer.raise_for_status()
        return int(answer.json().get("Last", 0))

    def study_uid(self, orthanc_id: str) -> str | None:
        answer = self.http.get(f"/studies/{orthanc_id}")
        if answer.status_code == 404:
            return None  # deleted since
        answer.raise_for_status()
        uid = (answer.json().get("MainDicomTags") or {}).get("StudyInstanceUID")
        return str(uid) if uid else None

    def _qido(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        answer = self.dicomweb.get(path, params=params)
        if answer.status_code == 204:
            return []
        answer.raise_for_status()
        found = answer.json()
        return list(found) if isinstance(found, list) else []

    def imaging_study(self, uid: str) -> dict[str, Any] | None:
        """The ImagingStudy for ``uid``, read over DICOMweb (``None``: no longer there)."""
        studies = self._qido(
            "/studies", {"StudyInstanceUID": uid, "includefield": list(dicom.STUDY_FIELDS)}
        )
        if not studies:
            return None
        series = []
        for ds in self._qido(f"/studies/{uid}/series", {"includefield": list(dicom.SERIES_FIELDS)}):
            suid = dicom.value(ds, dicom.SERIES_UID)
            instances = self._qido(f"/studies/{uid}/series/{suid}/instances", {}) if suid else []
            series.append((ds, instances))
        return dicom.imaging_study(
            studies[0],
            series,
            patient_system=self.opts.patient_system,
            endpoint=self.opts.endpoint or self.opts.dicomweb_root,
            offset=self.opts.utc_offset,
        )


class Gateway:
    def __init__(self, opts: Options, metrics: Metrics, sleep: Callable[[float], None]) -> None:
        self.opts = opts
        self.metrics = metrics
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=opts.gateway.rstrip("/"),
            timeout=opts.timeout_s,
            headers={"Authorization": f"Bearer {opts.token}", "Content-Type": FHIR_JSON},
        )

    def close(self) -> None:
        self.http.close()

    def post(self, resource: dict[str, Any]) -> int:
        """Post ``resource``; the final status (0: the gateway never answered). Retries what
        may succeed later, at most ``max_attempts`` posts in all, waiting only between two of
        them — never after the last."""
        body = json.dumps(resource, ensure_ascii=False).encode()
        delays = retry_delays(max(self.opts.max_attempts, 1) - 1)
        while True:
            try:
                answer = self.http.post("/fhir/ImagingStudy", content=body)
            except httpx.TransportError as exc:
                log.warning("gateway unreachable", extra={"error": type(exc).__name__})
                status, asked = 0, 0.0
            else:
                status = answer.status_code
                if status not in RETRY_STATUSES:
                    return status
                asked = _retry_after(answer)
            delay = next(delays, None)
            if delay is None:
                return status
            self.metrics.retries.inc()
            self.sleep(max(delay, asked))


def retry_delays(attempts: int, first: float = 0.5, top: float = 30.0) -> Iterator[float]:
    """``attempts`` waits, one after each failed attempt that another attempt follows: 0.5,
    1, 2 … seconds, at most ``top``."""
    delay = first
    for _ in range(attempts):
        yield delay
        delay = min(delay * 2, top)


def _retry_after(answer: httpx.Response) -> float:
    try:
        return min(float(answer.headers.get("Retry-After", "0")), 60.0)
    except ValueError:
        return 0.0


# ── the loop ────────────────────────────────────────────────────────────────────────────


@dataclass
class Summary:
    changes: int = 0
    posted: int = 0
    refused: int = 0
    skipped: int = 0
    last_seq: int = 0


def run(
    opts: Options,
    metrics: Metrics | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> Summary:
    """Follow the change feed from the saved state (see the module doc). With
    ``opts.once``, stop when the feed is drained. Raises ``ConnectorError`` when the
    gateway refuses the credential or stays unavailable."""
    metrics = metrics or Metrics()
    state = load_state(opts.state_path, opts.orthanc, opts.institution)
    orthanc, gateway = Orthanc(opts), Gateway(opts, metrics, sleep)
    summary = Summary(last_seq=state.last_seq)
    try:
        while not should_stop():
            changes, done, last = orthanc.changes(state.last_seq)
            for change in changes:
                seq = int(change["Seq"])
                if change.get("ChangeType") == "StableStudy":
                    outcome = _handle(orthanc, gateway, str(change["ID"]))
                    metrics.studies.labels(outcome).inc()
                    setattr(summary, outcome, getattr(summary, outcome) + 1)
                state.last_seq = seq
                save_state(opts.state_path, state)
                summary.changes += 1
            if not changes and last > state.last_seq:
                state.last_seq = last  # Orthanc skipped numbers (changes it deleted)
                save_state(opts.state_path, state)
            summary.last_seq = state.last_seq
            metrics.lag.set(max(0, orthanc.newest() - state.last_seq))
            if done:
                if opts.once:
                    break
                sleep(opts.interval_s)
    finally:
        orthanc.close()
        gateway.close()
    return summary


def _handle(orthanc: Orthanc, gateway: Gateway, orthanc_id: str) -> str:
    uid = orthanc.study_uid(orthanc_id)
    resource = orthanc.imaging_study(uid) if uid else None
    if resource is None:
        log.info("study gone before it was read", extra={"orthanc_id": orthanc_id})
        return "skipped"
    status = gateway.post(resource)
    if status in (200, 201):
        log.info("study posted", extra={"orthanc_id": orthanc_id})
        return "posted"
    if status in (401, 403):
        raise ConnectorError(f"the gateway refused the institution's credential ({status})")
    if status in RETRY_STATUSES or status == 0:
        raise ConnectorError(
            f"the gateway stayed unavailable ({status or 'no answer'}); "
            "run again later, the connector resumes at this study"
        )
    log.warning("study refused", extra={"orthanc_id": orthanc_id, "status": status})
    return "refused"


# ── command line ────────────────────────────────────────────────────────────────────────


def add_parser(sub: Any) -> None:
    """``mrhub connect orthanc …``"""
    p = sub.add_parser("connect", help="post a PACS's studies to the gateway")
    csub = p.add_subparsers(dest="source", required=True)
    q = csub.add_parser("orthanc", help="follow an Orthanc server's change feed")
    q.add_argument("--url", required=True, help="Orthanc's REST root, e.g. http://pacs:8042")
    q.add_argument("--institution", required=True, help="the posting institution's id")
    q.add_argument("--token", help="its gateway token (default: MRHUB_IMAGING__CONNECTOR_TOKEN)")
    q.add_argument("--gateway", help="gateway root (default: MRHUB_INGEST__HOST/PORT)")
    q.add_argument("--state", type=Path, help="state file (default: in MRHUB_STATE_DIR)")
    q.add_argument("--once", action="store_true", help="stop when the feed is drained")
    q.add_argument(
        "--patient-id-system",
        default=OUTPATIENT_NO_SYSTEM,
        help="Identifier.system of PatientID (default: 门诊号 " + OUTPATIENT_NO_SYSTEM + ")",
    )
    q.add_argument("--dicomweb", help="DICOMweb root to read (default: URL/dicom-web)")
    q.add_argument("--endpoint", help="DICOMweb root viewers use (default: --dicomweb)")
    q.add_argument(
        "--orthanc-user", help="Orthanc user (password: MRHUB_IMAGING__ORTHANC_PASSWORD)"
    )
    q.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    q.add_argument("--utc-offset", default="+08:00", help="offset of DICOM local times")
    q.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.set_defaults(func=cmd_connect)


def cmd_connect(args: argparse.Namespace, settings: Settings) -> int:
    img = settings.imaging
    token = args.token or (img.connector_token.get_secret_value() if img.connector_token else "")
    if not token:
        raise ConnectorError("no gateway token: --token or MRHUB_IMAGING__CONNECTOR_TOKEN")
    auth = None
    if args.orthanc_user:
        password = img.orthanc_password.get_secret_value() if img.orthanc_password else ""
        auth = (args.orthanc_user, password)
    gateway = args.gateway or f"http://{settings.ingest.host}:{settings.ingest.port}"
    opts = Options(
        orthanc=args.url.rstrip("/"),
        institution=args.institution,
        gateway=gateway,
        token=token,
        state_path=args.state or default_state_path(settings, args.url, args.institution),
        patient_system=args.patient_id_system,
        dicomweb=args.dicomweb,
        endpoint=args.endpoint,
        orthanc_auth=auth,
        once=args.once,
        interval_s=args.interval,
        utc_offset=args.utc_offset,
    )
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    metrics = Metrics()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, registry=metrics.registry)
    try:
        summary = run(opts, metrics)
    except httpx.HTTPError as exc:
        raise ConnectorError(f"Orthanc did not answer as expected: {type(exc).__name__}") from exc
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(summary)))
    return 0
