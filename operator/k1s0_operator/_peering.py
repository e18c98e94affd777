"""Kopf peering, opt-in: several operator replicas, one of them reconciling.

Kopf's peering is not a lock. Every operator writes a keep-alive (identity, priority, lifetime)
into the ``status`` of a peering object (``KopfPeering`` in each watched namespace, or one
``ClusterKopfPeering`` when watching all namespaces; group ``kopf.dev/v1``) and watches it: an
operator that sees a live peer with a *higher* priority pauses its watches, timers and daemons;
peers with the *same* priority all pause (Kopf cannot tell which should win). A peer that exits
cleanly removes its record at once; a peer that dies is considered gone when its record is older
than its lifetime, and the next in priority resumes.

So the replicas of one Deployment must have distinct priorities. By default the priority is
derived from the replica's identity (the pod name, ``POD_ID``, set by the chart): a hash in
``[1, AUTO_PRIORITY_LIMIT)``, distinct for distinct pods with overwhelming probability. A
developer's operator (``kopf run --priority``, ``kopf freeze --priority``) at or above
``AUTO_PRIORITY_LIMIT`` pauses every replica.

Variables (read by ``peering_from_env``):

* ``EVENTSTORE_OPERATOR_PEERING_NAME``: the peering object's name; empty or unset: standalone
  (no peering at all, exactly one replica must run);
* ``EVENTSTORE_OPERATOR_PEERING_PRIORITY``: an integer, or ``auto`` / empty (derived, see above);
* ``EVENTSTORE_OPERATOR_PEERING_LIFETIME_SECONDS`` (default 30): how long a silent peer is
  trusted; keep-alives are sent 5-10 s before it runs out, and a crashed active replica is
  replaced after at most this long;
* ``POD_ID``: this replica's identity in the peering object and in the Events it posts (Kopf's
  convention; default ``<hostname>/<pid>``).

Kopf does not create the peering object, and with mandatory peering an operator stays paused
until it exists. ``ensure_objects`` creates it (a ``KopfPeering`` per watched namespace, or the
``ClusterKopfPeering``) with this replica's record already in it, or adds the record to an
existing one, so that peers see each other from the first moment rather than one keep-alive
later; it retries until the ``kopf.dev`` CRDs are served.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from k1s0_event_store.sidecar_config import ConfigError

NAME_ENV = "EVENTSTORE_OPERATOR_PEERING_NAME"
PRIORITY_ENV = "EVENTSTORE_OPERATOR_PEERING_PRIORITY"
LIFETIME_ENV = "EVENTSTORE_OPERATOR_PEERING_LIFETIME_SECONDS"
IDENTITY_ENV = "POD_ID"

#: Derived priorities lie in [1, AUTO_PRIORITY_LIMIT); a priority at or above it outranks them all.
AUTO_PRIORITY_LIMIT = 1_000_000_000
DEFAULT_LIFETIME = 30
#: Kopf sends keep-alives 5-10 s before the lifetime runs out, but at least every second.
MIN_LIFETIME = 2

GROUP = "kopf.dev"
VERSION = "v1"
NAMESPACED_PLURAL = "kopfpeerings"
CLUSTER_PLURAL = "clusterkopfpeerings"

logger = logging.getLogger("k1s0_operator.peering")

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class Peering:
    name: str
    identity: str
    priority: int
    lifetime: int = DEFAULT_LIFETIME

    def apply(self, settings: kopf.OperatorSettings) -> None:
        """Mandatory peering under ``name``: never reconcile unpeered (a missing CRD or object pauses)."""
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.name = self.name
        settings.peering.priority = self.priority
        settings.peering.lifetime = self.lifetime
        settings.peering.stealth = True  # keep-alives are not logged; pauses and resumes are
        # Which replica acted is visible on each Event it posts (kubectl describe: "From").
        settings.posting.reporting_instance = self.identity


def derived_priority(identity: str) -> int:
    """A stable priority in ``[1, AUTO_PRIORITY_LIMIT)`` for ``identity``."""
    digest = hashlib.sha256(identity.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (AUTO_PRIORITY_LIMIT - 1)


def own_identity(env: Mapping[str, str]) -> str:
    return env.get(IDENTITY_ENV, "").strip() or f"{socket.gethostname()}/{os.getpid()}"


def peering_from_env(env: Mapping[str, str] | None = None) -> Peering | None:
    """The peering this replica takes part in, or None to run standalone."""
    env = os.environ if env is None else env
    name = env.get(NAME_ENV, "").strip()
    if not name:
        return None
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        raise ConfigError(f"{NAME_ENV}: {name!r} is not a valid Kubernetes object name")
    identity = own_identity(env)
    raw_priority = env.get(PRIORITY_ENV, "").strip()
    if raw_priority in ("", "auto"):
        priority = derived_priority(identity)
    else:
        try:
            priority = int(raw_priority)
        except ValueError:
            raise ConfigError(f"{PRIORITY_ENV}: must be an integer or 'auto' (got {raw_priority!r})") from None
    raw_lifetime = env.get(LIFETIME_ENV, "").strip() or str(DEFAULT_LIFETIME)
    try:
        lifetime = int(raw_lifetime)
    except ValueError:
        raise ConfigError(f"{LIFETIME_ENV}: must be a whole number of seconds (got {raw_lifetime!r})") from None
    if lifetime < MIN_LIFETIME:
        raise ConfigError(f"{LIFETIME_ENV}: must be at least {MIN_LIFETIME} (got {lifetime})")
    return Peering(name=name, identity=identity, priority=priority, lifetime=lifetime)


def own_record(peering: Peering, now: dt.datetime | None = None) -> dict[str, Any]:
    """This replica's entry in the peering object's status, in Kopf's format (``Peer.as_dict``)."""
    now = now or dt.datetime.now(dt.UTC)
    return {"priority": peering.priority, "lifetime": peering.lifetime, "lastseen": now.isoformat()}


def _create_or_join(custom: Any, peering: Peering, namespace: str | None) -> str:
    status = {peering.identity: own_record(peering)}
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "KopfPeering" if namespace else "ClusterKopfPeering",
        "metadata": {"name": peering.name, "labels": {"app.kubernetes.io/managed-by": "k1s0-eventstore-operator"}},
        "status": status,
    }
    try:
        if namespace:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, NAMESPACED_PLURAL, body, _request_timeout=10
            )
        else:
            custom.create_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, body, _request_timeout=10)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
    patch = {"status": status}
    if namespace:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, NAMESPACED_PLURAL, peering.name, patch, _request_timeout=10
        )
    else:
        custom.patch_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, peering.name, patch, _request_timeout=10)
    return "joined"


async def ensure_objects(
    custom: Any,
    peering: Peering,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    retry_seconds: float = 5.0,
    max_retry_seconds: float = 60.0,
) -> None:
    """Create or join the peering object(s); retried (doubling up to ``max_retry_seconds``) until done.

    ``custom`` is a ``kubernetes.client.CustomObjectsApi``. The namespaces are the operator's
    ``--namespace`` values (exact names).
    """
    pending: list[str | None] = [None] if clusterwide else list(dict.fromkeys(namespaces))
    delay = retry_seconds
    while pending:
        for namespace in list(pending):
            where = f"in namespace {namespace}" if namespace else "cluster-wide"
            try:
                outcome = await asyncio.to_thread(_create_or_join, custom, peering, namespace)
            except ApiException as exc:
                hint = " (are the kopf.dev peering CRDs installed?)" if exc.status == 404 else ""
                logger.warning("peering %r %s: HTTP %s %s%s; retrying in %.0fs",
                               peering.name, where, exc.status, exc.reason, hint, delay)
                continue
            except Exception as exc:  # connection errors: the API server may come back
                logger.warning("peering %r %s: %s; retrying in %.0fs", peering.name, where, exc, delay)
                continue
            logger.info("peering %r %s: %s as %r", peering.name, where, outcome, peering.identity)
            pending.remove(namespace)
        if pending:
            await asyncio.sleep(delay)
            delay = min(max_retry_seconds, delay * 2)
