# -*- test-case-name: tests.test_tls_registry -*-
"""
The sidecar's TLS contexts, made once per distinct set of files and
expectations and shared by every listener and upstream that needs them;
each watches its files for rotation while the sidecar runs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.abstract import isIPAddress, isIPv6Address

from easymesh.config.model import TLS_EXPIRY_WARNING, TLSFiles, UpstreamTLS
from easymesh.tls.contexts import PROTOCOLS, ClientTLS, ServerTLS

#: What a listener offers by ALPN, most preferred first: the same port
#: speaks HTTP/2 and HTTP/1.1.
SERVER_PROTOCOLS = (b"h2", b"http/1.1")


class TLSContexts:
    """
    TLS contexts by what they are made of.

    @param clock: Paces the checks of certificate files for rotation, and
        tells whether a certificate is valid.
    @param expiryWarning: Seconds before a certificate's notAfter from
        which it is warned about.
    """

    def __init__(
        self, clock: Any, checkEvery: float = 1.0, expiryWarning: float = TLS_EXPIRY_WARNING
    ) -> None:
        self._clock = clock
        self._checkEvery = checkEvery
        self._expiryWarning = expiryWarning
        self._clients: Dict[Tuple[UpstreamTLS, Optional[str], Tuple[bytes, ...]], ClientTLS] = {}
        self._servers: Dict[TLSFiles, ServerTLS] = {}
        self.running = False

    def client(
        self, tls: UpstreamTLS, host: str, protocols: Optional[Sequence[bytes]] = None
    ) -> ClientTLS:
        """
        The creator of client connections to C{host} (its SNI, unless it
        is an IP address), offering C{protocols} by ALPN (HTTP/1.1 unless
        given).
        """
        serverName = None if isIPAddress(host) or isIPv6Address(host) else host
        offered = tuple(protocols) if protocols else PROTOCOLS
        key = (tls, serverName, offered)
        creator = self._clients.get(key)
        if creator is None:
            files = tls.files
            creator = ClientTLS(
                files.cert,
                files.key,
                files.ca,
                tls.identities,
                serverName,
                self._clock,
                self._checkEvery,
                protocols=offered,
                expiryWarning=self._expiryWarning,
            )
            self._clients[key] = creator
            if self.running:
                creator.start()
        return creator

    def server(self, files: TLSFiles) -> ServerTLS:
        """
        The context of a listener that requires client certificates.
        """
        creator = self._servers.get(files)
        if creator is None:
            creator = ServerTLS(
                files.cert,
                files.key,
                files.ca,
                self._clock,
                True,
                self._checkEvery,
                protocols=SERVER_PROTOCOLS,
                expiryWarning=self._expiryWarning,
            )
            self._servers[files] = creator
            if self.running:
                creator.start()
        return creator

    def reload(self) -> None:
        """
        Re-read every context's files now (on SIGHUP).
        """
        for creator in self._all():
            creator.reload()

    def expiries(self) -> List[Tuple[str, float]]:
        """
        For each certificate file in use, the seconds until the notAfter of
        the certificate read from it (the soonest, should contexts made from
        the same file hold different ones); negative once expired.
        """
        soonest: Dict[str, float] = {}
        for creator in self._all():
            path = str(creator.paths[0])
            left = creator.expiresIn()
            soonest[path] = min(left, soonest.get(path, left))
        return sorted(soonest.items())

    def _all(self) -> List[Union[ServerTLS, ClientTLS]]:
        return list(self._servers.values()) + list(self._clients.values())

    def start(self) -> None:
        self.running = True
        for creator in self._all():
            creator.start()

    def stop(self) -> None:
        self.running = False
        for creator in self._all():
            creator.stop()
