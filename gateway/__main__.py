"""``python -m gateway`` is the ``cpimgw`` command."""

from gateway.cli import main

raise SystemExit(main())
