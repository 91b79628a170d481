"""``make demo``: a scripted conversation between an XMPP user and a SIP user through a real
Prosody, Kamailio and ``cpimgw run`` on loopback (``python -m gateway.demo``).

The pieces are reused by the end-to-end tests and the benchmark: :mod:`.template` (a
config from the operators' example), :mod:`.servers` (the servers as child processes) and
:mod:`.phone` (a SIP user agent on cpimgw's own SIP stack).
"""
