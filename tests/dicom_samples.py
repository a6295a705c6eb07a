"""DICOM instances as a modality would send them to a PACS, made with pydicom (for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Study:
    """Study-level facts of one generated study."""

    patient_id: str
    study_uid: str = field(default_factory=generate_uid)
    modality: str = "CT"
    body_part: str = "CHEST"
    study_date: str = "20261120"
    study_time: str = "083000"
    description: str = "胸部CT平扫"
    accession: str = "ACC0001"
    series: int = 2
    per_series: int = 2


def instances(study: Study) -> list[tuple[str, str, bytes]]:
    """Every instance of ``study`` as (series UID, SOP instance UID, Part 10 bytes)."""
    out: list[tuple[str, str, bytes]] = []
    for s in range(study.series):
        series_uid = generate_uid()
        for i in range(study.per_series):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study.study_uid
            ds.SeriesInstanceUID = series_uid
            ds.PatientID = study.patient_id
            ds.PatientName = "TEST^PATIENT"
            ds.PatientBirthDate = "19800101"
            ds.PatientSex = "M"
            ds.StudyDate = study.study_date
            ds.StudyTime = study.study_time
            ds.AccessionNumber = study.accession
            ds.StudyDescription = study.description
            ds.SeriesDescription = f"series {s + 1}"
            ds.StudyID = "1"
            ds.Modality = study.modality
            ds.BodyPartExamined = study.body_part
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = bytes([i % 256, 0]) * 64
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append((series_uid, sop_uid, buf.getvalue()))
    return out
