"""cpimgw-irc: an IRC adapter for cpimgw, installed as a plugin.

The gateway finds it through the ``cpimgw.adapters`` entry point ``irc``
(``cpimgw_irc.adapter:IrcAdapter``). Modules: :mod:`cpimgw_irc.line` (RFC 2812 lines),
:mod:`cpimgw_irc.mapping` (the pure mapper), :mod:`cpimgw_irc.adapter` (the shell).
"""

__version__ = "0.1.0"
