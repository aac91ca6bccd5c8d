"""Identity: SMART App Launch 2.x bearer tokens verified into a frozen ``Identity``.

``scopes`` (SMART v1/v2 scopes, ``allows``) and ``identity`` (claims to ``Identity``) are pure;
``jose`` (strict JWS compact form, RS256/ES256/EdDSA only) and ``keys`` (JWK Set to keys) do no
I/O either. ``jwks`` is the I/O edge (JWK Sets from files or URLs, cached, rotated); ``verify``
turns an ``Authorization`` header into an ``Identity`` or a 401; ``devissuer`` is the
``UnsafeDevelopmentIssuer``; ``settings`` (``AuthSettings``) and ``factory``
(``build_verifier``, ``build_dev_issuer``) configure and wire them; ``cli`` is
``consentry token issue``. Nothing is re-exported here, so importing a pure module does not
load httpx.
"""
