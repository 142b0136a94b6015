"""
The test app (L{tests.integration.app.TestApp}) with a listen queue deep
enough for a burst of connections.

socketserver listens with a backlog of 5: a sidecar opening hundreds of
connections to the app at once would see SYNs dropped and retransmitted a
second or more later, a limit of the test app, not of the sidecar.
"""

from __future__ import annotations

from tests.integration.app import TestApp


class WideTestApp(TestApp):
    """
    L{TestApp}, listening with a backlog of C{backlog}.
    """

    __test__ = False

    def __init__(self, mode: str = "normal", backlog: int = 4096) -> None:
        super().__init__(mode)
        # listen() again on a listening socket only changes its backlog.
        self._server.socket.listen(backlog)
