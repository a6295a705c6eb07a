"""Imaging index: every hospital's studies of a patient, over FHIR and DICOMweb.

See docs/imaging.md.
"""
