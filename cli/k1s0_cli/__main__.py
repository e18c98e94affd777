"""``python -m k1s0_cli`` is ``k1s0-eventstore``."""

from ._commands import main

raise SystemExit(main())
