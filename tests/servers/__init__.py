"""Real peers for the tests (Prosody, ejabberd, Kamailio, SIPp, Redis, ngIRCd, dnsmasq),
started as foreground child processes on loopback and always stopped, even on failure."""
