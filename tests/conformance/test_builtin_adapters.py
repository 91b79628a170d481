"""The whole conformance suite against every built-in adapter that is installed and loads.

The built-in adapters are the ``cpimgw.adapters`` entry points of the cpimgw distribution
itself (memory, xmpp, sip, cpim). Each one that loads gets a test class: one test per
case, cross-protocol cases through every other built-in adapter that loads. One that does
not load fails ``test_every_builtin_adapter_loads`` with its import error (every built-in
adapter is in the distribution: none is "not there yet").
"""

from __future__ import annotations

from adapters.conformance import AdapterConformance
from adapters.contract import AdapterInfo, available

BUILTIN = ("memory", "xmpp", "sip", "cpim")


def _builtins() -> dict[str, AdapterInfo]:
    return {i.name: i for i in available() if i.distribution == "cpimgw" and i.name in BUILTIN}


_INFOS = _builtins()
_LOADED = [name for name in BUILTIN if name in _INFOS and _INFOS[name].adapter is not None]


def test_every_builtin_adapter_is_registered_in_the_entry_point_group() -> None:
    assert set(_INFOS) == set(BUILTIN)


def test_every_builtin_adapter_loads() -> None:
    # one that does not load gets no conformance class below: say so here, with its error
    errors = {
        name: (_INFOS[name].error if name in _INFOS else "not registered")
        for name in BUILTIN
        if name not in _LOADED
    }
    assert errors == {}, f"built-in adapters that do not load: {errors}"


for _name in _LOADED:
    _class = type(
        f"TestBuiltin{_name.title()}Conformance",
        (AdapterConformance,),
        {
            "adapter": _name,
            "peers": [n for n in _LOADED if n != _name],
            "__doc__": f"The conformance suite against the built-in {_name} adapter.",
            "__module__": __name__,
        },
    )
    globals()[_class.__name__] = _class
