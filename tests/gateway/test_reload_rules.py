"""SIGHUP reloads the access rules of a running ``cpimgw run``, not only its routes: a
``deny`` pattern added to the config file refuses, on the same open connection, a message
between parties that passed a moment before, with ``forbidden`` and the pattern named to
the sender; nothing of it reaches the other network, and other parties still pass."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from canonical.envelope import CPIM, Envelope, Payload, identity_of, to_record
from tests.gateway.samples import cpim_body

pytest.importorskip("cpimgw_testnet", reason="pip install -e tests/plugins/cpimgw-testnet")
from cpimgw_testnet import frame, read_frame

from tests.gateway.test_process import envelope, running_gateway

pytestmark = pytest.mark.e2e

DENIED = "peer3@dst.test"


def with_deny(text: str, *patterns: str) -> str:
    """The config ``text`` with ``deny`` patterns in its ``[security]`` table."""
    listed = ", ".join(f'"{p}"' for p in patterns)
    changed = text.replace("[security]\nrate = 0\n", f"[security]\nrate = 0\ndeny = [{listed}]\n")
    assert changed != text, "the [security] table of the test config moved"
    return changed


def fresh(base: Envelope, tag: str) -> Envelope:
    """A new message (own text, own identity) between the parties of ``base``."""
    body = cpim_body(base.sender, base.recipient, f"message {tag}")
    return base.replace(payload=Payload(CPIM, body), identity=identity_of("reload-rules", tag))


async def test_deny_rule_added_by_sighup_refuses_a_message_that_passed_before(
    tmp_path: Path,
) -> None:
    async with running_gateway(tmp_path) as gw:
        proc, sink, config, text = gw.proc, gw.sink, gw.config, gw.text
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.inbound)
        seq = 0

        async def send(env: Envelope) -> dict[str, object]:
            nonlocal seq
            seq += 1
            writer.write(frame({"seq": seq, "envelope": to_record(env)}))
            await writer.drain()
            answer = await read_frame(reader)
            assert answer is not None, proc.log()
            assert answer["seq"] == seq
            return dict(answer)

        to_denied = envelope(3)  # im:user3@src.test -> im:peer3@dst.test
        other = envelope(1)  # im:user1@src.test -> im:peer1@dst.test
        assert to_denied.recipient == f"im:{DENIED}"
        assert DENIED not in other.recipient

        before = await send(fresh(to_denied, "before"))
        assert before["ok"] is True, before

        # the rule is in the file but not yet loaded: still accepted
        config.write_text(with_deny(text, DENIED))
        unloaded = await send(fresh(to_denied, "written-not-loaded"))
        assert unloaded["ok"] is True, unloaded

        proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        answer: dict[str, object] = {}
        for attempt in range(100):
            answer = await send(fresh(to_denied, f"after-{attempt}"))
            if not answer["ok"]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"SIGHUP did not load the deny rule:\n{proc.log()}")
        refused = fresh(to_denied, f"after-{attempt}")
        assert answer["reason"] == "forbidden", answer
        assert DENIED in str(answer["message"]), answer
        assert "denied by pattern" in str(answer["message"]), answer

        still = await send(fresh(other, "other-after"))  # the rule, not a broken gateway
        assert still["ok"] is True, still
        writer.close()

        delivered = {fresh(to_denied, "before").identity, fresh(other, "other-after").identity}
        for _ in range(500):
            if delivered <= set(sink.received):
                break
            await asyncio.sleep(0.01)
        assert delivered <= set(sink.received)
        assert refused.identity not in sink.received
