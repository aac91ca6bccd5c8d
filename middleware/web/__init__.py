"""The web pages: the patient portal (``/portal/``) and the compliance dashboard
(``/compliance/``), server-rendered over the gateway's own APIs (docs/web.md)."""
