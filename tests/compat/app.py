"""An ordinary application's use of Redis, through redis-py.

Run against a server and print one JSON line per step: the step's name and
what the client returned, made comparable (TTLs rounded, sets sorted).
benches/client_compat.sh runs it against kv-server and a real
redis-server and compares the lines.

    python app.py HOST PORT PROTOCOL(2|3) sync|async
"""

import asyncio
import json
import sys

import redis
import redis.asyncio
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)


def show(v):
    """Makes a reply comparable across servers and protocols."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [show(x) for x in v]
    if isinstance(v, set):
        return sorted(show(x) for x in v)
    if isinstance(v, dict):
        return {show(k): show(x) for k, x in sorted(v.items())}
    return v


def steps():
    """(name, coroutine-or-call maker) pairs: each takes a client `r` and
    returns what to print. Written once for the sync and async clients:
    `call` awaits when needed."""
    return [
        ("flushdb", lambda r: r.flushdb()),
        ("ping", lambda r: r.ping()),
        ("set", lambda r: r.set("app:user:1", "ada")),
        ("get", lambda r: r.get("app:user:1")),
        ("get missing", lambda r: r.get("app:nope")),
        ("set nx existing", lambda r: r.set("app:user:1", "x", nx=True)),
        ("set xx missing", lambda r: r.set("app:user:9", "x", xx=True)),
        ("set ex", lambda r: r.set("app:session", "tok", ex=100)),
        ("ttl", lambda r: r.ttl("app:session")),
        ("set get", lambda r: r.set("app:user:1", "grace", get=True)),
        ("setex", lambda r: r.setex("app:cache", 50, "v")),
        ("pttl rounded", lambda r: r.pttl("app:cache")),
        ("expire", lambda r: r.expire("app:user:1", 1000)),
        ("persist", lambda r: r.persist("app:user:1")),
        ("ttl after persist", lambda r: r.ttl("app:user:1")),
        ("incr", lambda r: r.incr("app:hits")),
        ("incrby", lambda r: r.incrby("app:hits", 10)),
        ("decr", lambda r: r.decr("app:hits")),
        ("incrbyfloat", lambda r: r.incrbyfloat("app:ratio", 0.5)),
        ("incr not a number", lambda r: r.incr("app:user:1")),
        ("mset", lambda r: r.mset({"app:a": "1", "app:b": "2"})),
        ("mget", lambda r: r.mget("app:a", "app:b", "app:nope")),
        ("exists", lambda r: r.exists("app:a", "app:b", "app:nope")),
        ("append", lambda r: r.append("app:a", "23")),
        ("strlen", lambda r: r.strlen("app:a")),
        ("getrange", lambda r: r.getrange("app:a", 0, 1)),
        ("setnx", lambda r: r.setnx("app:a", "z")),
        ("getdel", lambda r: r.getdel("app:b")),
        ("type", lambda r: r.type("app:a")),
        ("rename", lambda r: r.rename("app:a", "app:c")),
        ("keys", lambda r: sorted(show(r_keys) for r_keys in r.keys("app:*"))),
        ("dbsize", lambda r: r.dbsize()),
        ("delete", lambda r: r.delete("app:c", "app:nope")),
        ("client setname", lambda r: r.client_setname("app-worker")),
        ("client getname", lambda r: r.client_getname()),
        ("echo", lambda r: r.echo("hello")),
        ("unsupported type", lambda r: r.lpush("app:list", "x")),
        ("pipeline", "pipeline"),
        ("transaction", "transaction"),
        ("scan_iter", "scan"),
    ]


def result(v):
    if isinstance(v, Exception):
        return {"error": type(v).__name__}
    return show(v)


def normalize(name, v):
    if name in ("ttl",):
        return v if not isinstance(v, int) else (v > 90)
    if name == "pttl rounded":
        return v if not isinstance(v, int) else (40000 < v <= 50000)
    return v


def run_sync(host, port, protocol):
    r = redis.Redis(host=host, port=port, protocol=protocol)
    out = []
    for name, step in steps():
        try:
            if step == "pipeline":
                p = r.pipeline(transaction=False)
                p.set("app:p1", "1").incr("app:p2").get("app:p1")
                v = p.execute()
            elif step == "transaction":
                p = r.pipeline()
                p.set("app:t1", "1").incr("app:t1").get("app:t1")
                v = p.execute()
            elif step == "scan":
                v = sorted(show(k) for k in r.scan_iter(match="app:p*", count=2))
            else:
                v = step(r)
            v = result(v)
        except Exception as e:  # noqa: BLE001 - the error type is the answer
            v = result(e)
        out.append((name, normalize(name, v)))
    return out


async def run_async(host, port, protocol):
    r = redis.asyncio.Redis(host=host, port=port, protocol=protocol)
    out = []
    for name, step in steps():
        try:
            if step == "pipeline":
                p = r.pipeline(transaction=False)
                p.set("app:p1", "1").incr("app:p2").get("app:p1")
                v = await p.execute()
            elif step == "transaction":
                p = r.pipeline()
                p.set("app:t1", "1").incr("app:t1").get("app:t1")
                v = await p.execute()
            elif step == "scan":
                v = sorted([show(k) async for k in r.scan_iter(match="app:p*", count=2)])
            elif name == "keys":
                v = sorted(show(k) for k in await r.keys("app:*"))
            else:
                v = await step(r)
            v = result(v)
        except Exception as e:  # noqa: BLE001
            v = result(e)
        out.append((name, normalize(name, v)))
    await r.aclose()
    return out


def main():
    host, port, protocol, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode == "async":
        out = asyncio.run(run_async(host, port, protocol))
    else:
        out = run_sync(host, port, protocol)
    for name, v in out:
        print(json.dumps({"step": name, "result": v}, sort_keys=True))


if __name__ == "__main__":
    main()
