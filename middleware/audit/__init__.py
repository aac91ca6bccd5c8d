"""Audit records: IHE BALP AuditEvents built from what the pipeline already decided."""

__all__: list[str] = []
