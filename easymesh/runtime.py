# -*- test-case-name: tests.test_runtime -*-
"""
The routes and clusters a sidecar runs with, built from a L{MeshConfig}
and replaced as a whole on reload: clusters whose config is unchanged are
kept (with their pools and endpoint state), the rest are built anew, and
requests in flight finish on the objects they started with.
"""

from __future__ import annotations

import random as _random
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from easymesh.cluster.cluster import Cluster
from easymesh.config.mesh import MeshConfig
from easymesh.config.validate import InvalidConfig, Problem, checkMesh
from easymesh.routing.router import Router
from easymesh.upstream import upstreamFor


class MeshRuntime:
    """
    The running clusters and each listener's router.

    @ivar routers: The current L{Router} per listener name; a listener reads
        it for every request, so replacing it is the atomic switch.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        random: Optional[_random.Random] = None,
        resolver: Any = None,
        makeUpstream: Callable[..., Any] = upstreamFor,
        telemetry: Any = None,
    ) -> None:
        self._reactor = reactor
        self._telemetry = telemetry
        self._random = random if random is not None else _random.Random()
        self._resolver = resolver
        self._makeUpstream = makeUpstream
        self.mesh: Optional[MeshConfig] = None
        self.clusters: Dict[str, Cluster] = {}
        self.routers: Dict[str, Router] = {}
        self.running = False

    def apply(self, mesh: MeshConfig) -> None:
        """
        Run with C{mesh} from now on.  Rate limits of routes that are
        unchanged keep their buckets.

        @raise InvalidConfig: C{mesh} breaks a rule of
            L{easymesh.config.validate} (a route names a cluster it does
            not have, say); its message lists every problem, and nothing is
            changed.
        """
        checkMesh(mesh)
        if self.mesh is not None and mesh.listeners != self.mesh.listeners:
            raise InvalidConfig([Problem(("listeners",), "listeners are added, removed or changed only by a restart")])
        clusters: Dict[str, Cluster] = {}
        started: List[Cluster] = []
        try:
            for name, config in mesh.clusters.items():
                old = self.clusters.get(name)
                if old is not None and old.config == config:
                    clusters[name] = old
                    continue
                cluster = Cluster(
                    config,
                    self._reactor,
                    self._random,
                    self._resolver,
                    self._makeUpstream,
                    self._telemetry,
                )
                clusters[name] = cluster
                started.append(cluster)
            routers = {
                listener: Router(
                    listener,
                    mesh,
                    clusters,
                    self._reactor,
                    self._random,
                    previous=self.routers.get(listener),
                )
                for listener in mesh.httpListenerNames()
            }
        except BaseException:
            for cluster in started:
                cluster.stop()
            raise
        retired = [c for name, c in self.clusters.items() if clusters.get(name) is not c]
        self.mesh = mesh
        self.clusters = clusters
        self.routers = routers
        if self.running:
            for cluster in started:
                cluster.start()
        for cluster in retired:
            # Requests in flight finish on the retired cluster's endpoints;
            # its idle connections close now.
            cluster.stop()

    def start(self) -> None:
        self.running = True
        for cluster in self.clusters.values():
            cluster.start()

    def stop(self) -> Deferred[Any]:
        """
        Stop every cluster's checks and close their idle connections.
        """
        self.running = False
        return DeferredList([c.stop() for c in self.clusters.values()], consumeErrors=True)
