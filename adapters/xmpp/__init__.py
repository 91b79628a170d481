"""cpimgw's XMPP side: a XEP-0114 external component (slixmpp) with a pure, lossless
stanza <-> canonical mapping. See docs/xmpp.md."""
