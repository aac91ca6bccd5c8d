"""FHIR knowledge without I/O: request classification, OperationOutcome rendering, JSON codec."""
