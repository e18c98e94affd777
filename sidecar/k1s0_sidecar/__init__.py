"""k1s0_sidecar: the event-store server every app pod talks to on localhost: REST (aiohttp) and
gRPC (grpc.aio) over one application service on ``k1s0_event_store``, with subscriptions, JWT
role checks, an audit log, metrics, tracing and the Kafka forwarder.

Public (what ``k1s0_cli`` runs): ``serve`` and ``Sidecar`` (start-up and shutdown of every part),
``PortInUseError``, ``configure_logging``, ``setup_tracing``/``shutdown_tracing``; the subpackage
``forwarding`` (the outbox relay to Kafka, usable on its own).

Everything else is private, one concern a module:
``_runtime`` (the parts built and stopped together), ``_service`` (the one application service
both edges call), ``_group_commit`` (many appends, one transaction), ``_subscriptions`` (live
reads), ``_rest``/``_openapi``/``_console`` (the HTTP edge, its contract, the web console),
``_grpc_api`` (the gRPC edge), ``_wire`` (JSON renderings), ``_errors`` (the one error map),
``_auth``/``_authz`` (tokens and roles), ``_audit`` (the audit log), ``_metrics``, ``_tracing``,
``_logs``.
"""

from ._logs import configure_logging
from ._runtime import PortInUseError, Sidecar, serve
from ._tracing import setup as setup_tracing
from ._tracing import shutdown as shutdown_tracing

__all__ = ["PortInUseError", "Sidecar", "configure_logging", "serve", "setup_tracing", "shutdown_tracing"]
