"""cpimgw's SIP side: a sans-I/O SIP layer (codec, header grammar, transactions, digest,
subscriptions), the pure SIP <-> canonical mapping, and the asyncio adapter shell.

Pure modules: :mod:`.codec`, :mod:`.header`, :mod:`.transaction`, :mod:`.digest`,
:mod:`.subscription`, :mod:`.validation`, :mod:`.mapping`. I/O: :mod:`.transport`,
:mod:`.endpoint`, :mod:`.adapter`. See ``docs/sip.md``.
"""
