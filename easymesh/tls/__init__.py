"""
Mutual TLS between sidecars.

  - L{easymesh.tls.certs}: a development CA and workload certificates.
  - L{easymesh.tls.identity}: identities in certificates and the patterns
    that say which are accepted.
  - L{easymesh.tls.credentials}: reading and checking certificate, key and
    CA files.
  - L{easymesh.tls.contexts}: server and client TLS built from those files,
    reloaded when they change.
"""
