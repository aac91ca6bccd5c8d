"""The R4 <-> R5 converter as it was before its speed work (``versions.py`` and
``versions_engine.py`` of commit fc919e3, imports pointed here), kept unchanged as the oracle of
the equivalence properties in ``test_versions_properties.py``: the faster converter must give
the same resources and the same losses on every input."""
