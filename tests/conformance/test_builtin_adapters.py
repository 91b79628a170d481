"""The whole conformance suite against every built-in adapter that is installed and loads.

The built-in adapters are the ``cpimgw.adapters`` entry points of the cpimgw distribution
itself (memory, xmpp, sip, cpim). Each one that loads gets a test class: one test per
case, cross-protocol cases through every other built-in adapter that loads. One that does
not load yet is reported by a skipped test carrying its import error, so the suite starts
running for it as soon as it lands.
"""

from __future__ import annotations

import pytest

from adapters.conformance import AdapterConformance
from adapters.contract import AdapterInfo, available

BUILTIN = ("memory", "xmpp", "sip", "cpim")


def _builtins() -> dict[str, AdapterInfo]:
    return {i.name: i for i in available() if i.distribution == "cpimgw" and i.name in BUILTIN}


_INFOS = _builtins()
_LOADED = [name for name in BUILTIN if name in _INFOS and _INFOS[name].adapter is not None]


def test_every_builtin_adapter_is_registered_in_the_entry_point_group() -> None:
    assert set(_INFOS) == set(BUILTIN)


@pytest.mark.parametrize("name", [n for n in BUILTIN if n not in _LOADED])
def test_builtin_adapter_not_loaded_yet(name: str) -> None:
    info = _INFOS.get(name)
    pytest.skip(f"built-in adapter {name} does not load: {info.error if info else 'missing'}")


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
