"""Code as it was before the mapping path's speed work, kept unchanged as the oracle of the
equivalence properties: the R4 <-> R5 converter (``versions.py`` and ``versions_engine.py`` of
commit fc919e3, imports pointed here; ``test_versions_properties.py``) and the reference walk
(``references.py``; ``test_references.py``). The faster code must give the same results and
the same errors on every input."""
