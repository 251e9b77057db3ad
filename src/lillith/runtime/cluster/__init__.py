"""Agents as Ray actors: ``lillith run --cluster ray[://ADDRESS]``.

The daemon keeps the MQTT intake, validation, publishing and acknowledgement;
each agent (or shard of agents) lives in a Ray actor
(:mod:`lillith.runtime.cluster.host`) fed in micro-batches by a thread of the
daemon (:mod:`lillith.runtime.cluster.dispatch`). Ray is an optional
dependency (``pip install lillith[ray]``), imported only when a cluster is
started: importing this package does not import it.
"""

from lillith.runtime.cluster.dispatch import ActorWorker, ClusterError, RayCluster

__all__ = ["ActorWorker", "ClusterError", "RayCluster"]
