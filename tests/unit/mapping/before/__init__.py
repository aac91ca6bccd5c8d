"""Code as it was before the mapping path's speed work, kept unchanged as the oracle of the
equivalence properties: the R4 <-> R5 converter (``versions.py`` and ``versions_engine.py`` of
commit fc919e3, imports pointed here; ``test_versions_properties.py``) and the reference walk
(``references.py``; ``test_references.py``). The faster code must give the same results and
the same errors on every input. One later change of *what* is rewritten is applied to both,
so that the oracle still judges only the speed work: every element of a Bundle entry and of
each link is walked, and an extension's ``valueUri``/``valueUrl`` naming a resource of the
upstream is rewritten like a reference."""
