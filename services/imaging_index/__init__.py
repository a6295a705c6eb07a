"""Imaging index: studies by patient, FHIR and DICOMweb search (not written yet)."""
