"""The operator's commands: config check/show, queue list/retry/drop, subscriptions list."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.presence import Subscription, SubscriptionState
from gateway.store import Commit, EntryState, Outbound
from gateway.store.sqlite import SqliteStore
from tests.gateway.samples import message
from tests.gateway.test_config import GOOD


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    file = tmp_path / "gw.toml"
    file.write_text(GOOD)
    return file


async def seeded(path: Path) -> list[str]:
    """Two pending entries, one failed, one subscription."""
    store = SqliteStore(path)
    await store.open()
    ids = []
    for text in ("a", "b", "c"):
        env = message(text=text)
        ids += (await store.commit(Commit(env.identity, 1000.0, (Outbound("peer", env, 9e9),)))).ids
    [first, *_] = await store.claim(1000.0, 1)
    await store.fail(first.id, error="no such user", now=1001.0)
    sub = Subscription(
        "xmpp:a@example.com",
        "sip:b@x.example.net",
        SubscriptionState.ACTIVE,
        "users",
        "peer",
        None,
        1.0,
        1.0,
    )
    await store.commit(Commit("s", 1002.0, subscriptions=(sub,)))
    await store.close()
    return ids


def test_config_check_accepts_a_good_file(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(config_file)]) == 0
    assert "ok (gateway gw1.example.com, 2 adapter(s), 3 route(s)" in capsys.readouterr().out


def test_config_check_lists_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("rate = 5", "rate = -5\nburst = 0"))
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert all(line.startswith(f"{bad}:") for line in err)


def test_config_check_of_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(tmp_path / "none.toml")]) == 2
    assert "cannot read the config file" in capsys.readouterr().err


def test_config_show_masks_secrets(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["config", "show", str(config_file)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["gateway"]["id"] == "gw1.example.com"
    assert shown["adapters"]["peer"] == {
        "kind": "memory",
        "link": "wire",
        "capabilities": None,
        "forget_trace": False,
        "renew_identity": False,
    }


async def test_queue_list_retry_drop(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = await seeded(config_file.parent / "state" / "queue.sqlite3")

    # the commands run their own event loop: call them from a thread
    async def run(*argv: str) -> int:
        return await asyncio.to_thread(main, list(argv))

    assert await run("queue", "list", "-c", str(config_file)) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 pending, 1 failed")
    assert "no such user" in out
    assert await run("queue", "list", "-c", str(config_file), "--state", "failed", "--json") == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["id"] == ids[0]
    assert row["state"] == EntryState.FAILED.value
    assert await run("queue", "retry", "-c", str(config_file), "--all-failed") == 0
    assert "retried 1 entry" in capsys.readouterr().out
    assert await run("queue", "drop", "-c", str(config_file), ids[1]) == 0
    assert "dropped 1 entry" in capsys.readouterr().out
    assert await run("queue", "drop", "-c", str(config_file), "999") == 1
    assert await run("queue", "drop", "-c", str(config_file)) == 2
    capsys.readouterr()
    assert await run("queue", "list", "-c", str(config_file), "--json") == 0
    left = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert left == [ids[0], ids[2]]


async def test_subscriptions_list(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seeded(config_file.parent / "state" / "queue.sqlite3")
    assert await asyncio.to_thread(main, ["subscriptions", "list", "-c", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "xmpp:a@example.com -> sip:b@x.example.net active (users -> peer, expires never)" in out
    assert "1 subscription(s)" in out


def test_queue_commands_need_an_existing_store(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["queue", "list", "-c", str(config_file)]) == 2
    assert "no store at" in capsys.readouterr().err
