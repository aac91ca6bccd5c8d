"""Operations: metrics in Prometheus text format and the health endpoints."""
