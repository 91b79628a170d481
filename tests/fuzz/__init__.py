"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser that reads the network.

One harness module per target (``tests/fuzz/<target>.py``), each with:

- ``run(data)``: feed one input through the same pure path the adapter shells use; it may
  raise only the documented error types listed in ``ALLOWED`` (anything else, a law that
  does not hold, a hang past the per-input time limit, or memory past ``-rss_limit_mb`` is
  a finding);
- ``ALLOWED``: those error types (each harness's docstring says where they are documented);
- ``MAX_LEN``: the longest input libFuzzer generates for it;
- ``seeds()``: the starting corpus, built from the shipped vectors and the test messages.

``python -m tests.fuzz --seconds N`` (``make fuzz``) runs every target for N seconds, one
after another, each in its own process; crashing inputs are kept as regression cases in
``tests/fuzz/regressions/<target>/`` and replayed by ``tests/fuzz/test_fuzz.py``.

This package must not import ``canonical`` or ``adapters`` at import time: the engine
imports them under atheris instrumentation, which only sees modules loaded after it starts.
"""

from __future__ import annotations

#: Every target, in the order ``make fuzz`` runs them.
TARGETS: tuple[str, ...] = (
    "cpim_entity",
    "cpim_body",
    "sip_datagram",
    "sip_stream",
    "pidf_document",
    "xml_document",
    "xmpp_stanza",
    "http_request",
    "smime_object",
    "address_text",
)

#: Findings still open in code the fuzz suite does not own, as (exception type, file where it
#: is raised): the engine lets them pass so a run can look for new ones, and
#: ``tests/fuzz/test_fuzz.py`` replays their inputs as strict xfails. Remove an entry once
#: its fix lands (the xfail then fails as XPASS and says so).
KNOWN_OPEN_CRASHES: tuple[tuple[str, str], ...] = ()
