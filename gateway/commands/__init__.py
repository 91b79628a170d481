"""Command groups of the ``cpimgw`` command line (see :mod:`gateway.cli`)."""
