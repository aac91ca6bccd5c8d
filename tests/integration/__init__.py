"""Integration tests: the gateway in front of the real shared upstream FHIR server."""
