"""Consentry: a FHIR consent and interoperability gateway.

The import package is ``middleware``; the distribution and the command are ``consentry``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
