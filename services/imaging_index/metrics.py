"""The imaging index's Prometheus metrics. Labels are bounded: modality codes (unknown ones
are ``other``), institution ids from the registry, routes, outcomes, stages — never a
patient, an identifier or a study UID."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import build_info, new_registry

SERVICE = "imaging_index"


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
        build_info(self.registry, SERVICE)
        self.studies_indexed = Counter(
            "mrhub_imaging_studies_indexed_total",
            "Study copies indexed (new or changed), by modality and posting institution.",
            ["modality", "source"],
            registry=self.registry,
        )
        self.duplicates_merged = Counter(
            "mrhub_imaging_duplicates_merged_total",
            "Copies of a study already indexed from another institution, merged into it.",
            registry=self.registry,
        )
        self.records = Counter(
            "mrhub_imaging_records_total",
            "Imaging results read, by what they did: new, update, retraction, report, "
            "stale (older than one applied), unchanged, refused (a withdrawal of another "
            "source's copy), patient-conflict (two sources of one study name different "
            "patients).",
            ["change"],
            registry=self.registry,
        )
        self.queries = Counter(
            "mrhub_imaging_queries_total",
            "Reads, by route (fhir, qido) and outcome (found, none, unknown-patient, "
            "invalid, unauthenticated, unavailable).",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.checks = Counter(
            "mrhub_imaging_endpoint_checks_total",
            "Reachability checks of study endpoints (QIDO-RS on the source), by outcome "
            "(available, missing, unreachable, dropped).",
            ["outcome"],
            registry=self.registry,
        )
        self.index_lag = Histogram(
            "mrhub_imaging_index_lag_seconds",
            "From the gateway receiving a study to the imaging index listing it.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "mrhub_imaging_dead_letters_total",
            "Messages sent to the dead-letter topic, by stage (records, studies, patients).",
            ["stage"],
            registry=self.registry,
        )
