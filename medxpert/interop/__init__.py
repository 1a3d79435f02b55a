"""Fitting a radiology department: a diagnosis as a DICOM Structured Report (`sr`) and as FHIR R4
resources (`fhir`), a DICOM node that receives studies from a PACS (`node`), and batch worklists
(`worklist`)."""
