"""``python -m panther demo|bench ...``: see :mod:`panther.cli`."""

from .cli import main

raise SystemExit(main())
