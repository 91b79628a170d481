"""``python -m gateway.demo`` (``make demo``): see :mod:`gateway.demo.conversation`."""

from gateway.demo.conversation import main

raise SystemExit(main())
