"""The only upstream I/O: the upstream client seam, header policy, base-URL rewriting and the
forwarding handler."""
