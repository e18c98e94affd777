"""k1s0_cli: the ``k1s0-eventstore`` command, one entry point with a subcommand per job.

It sits above the other packages: ``serve`` runs the sidecar (``k1s0_sidecar``), ``operator`` the
Kubernetes operator (``k1s0_operator``), ``migrate`` and ``version`` use the library
(``k1s0_event_store``), and ``streams``/``events``/``snapshots`` are a gRPC client for people
(read, append, inspect, tail). Nothing below imports this package.

Public: ``main`` (the console script) and ``build_parser``. The modules are private: ``_commands``
(the server-side subcommands and the parser), ``_client`` (the people's gRPC client subcommands).
"""

from ._commands import build_parser, main

__all__ = ["build_parser", "main"]
