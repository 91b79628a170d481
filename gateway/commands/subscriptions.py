"""``cpimgw subscriptions list -c FILE``: the presence book as stored."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gateway.commands.queue import _store


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("subscriptions", help="inspect presence subscriptions")
    sub = parser.add_subparsers(dest="subscriptions_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every stored subscription")
    listing.add_argument("-c", "--config", required=True)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=handle_list)


async def _list(args: argparse.Namespace) -> int:
    store = _store(args.config)
    await store.open()
    try:
        subs = await store.subscriptions()
        known = {p.presentity: p.at for p in await store.presences()}
    finally:
        await store.close()
    now = time.time()
    for sub in subs:
        row = {
            "watcher": sub.watcher,
            "presentity": sub.presentity,
            "state": sub.state.value,
            "watcher_adapter": sub.watcher_adapter,
            "presentity_adapter": sub.presentity_adapter,
            "expires_in": None if sub.expires_at is None else round(sub.expires_at - now),
            "presence_age": None
            if sub.presentity not in known
            else round(now - known[sub.presentity]),
        }
        if args.json:
            print(json.dumps(row, sort_keys=True))
        else:
            expires = "never" if row["expires_in"] is None else f"{row['expires_in']}s"
            print(
                f"{sub.watcher} -> {sub.presentity} {sub.state.value}"
                f" ({sub.watcher_adapter} -> {sub.presentity_adapter}, expires {expires})"
            )
    if not args.json:
        print(f"{len(subs)} subscription(s)")
    return 0


def handle_list(args: argparse.Namespace) -> int:
    return asyncio.run(_list(args))
