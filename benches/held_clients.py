#!/usr/bin/env python3
"""Opens N connections to a gateway that will hold them (a component at zero replicas whose
replica never becomes ready), each a POST declaring an 8 MiB body, and keeps them open for
SECONDS. Each behaves as curl does with a large body: `Expect: 100-continue`, then the body
after a `100 Continue` or after 1 s without an answer. Prints one line: how many were answered,
with which statuses, and how fast the refused ones (503, hold queue full) were answered.

   held_clients.py HOST:PORT PATH N SECONDS [BODY_MIB]
"""
import asyncio
import sys
import time
from collections import Counter


async def one(host, port, path, body_len, seconds, out):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        out.append(("connect-error", time.monotonic() - started, str(e)))
        return
    writer.write(
        (f"POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
         f"content-length: {body_len}\r\nexpect: 100-continue\r\n\r\n").encode())
    chunk = b"0" * (256 << 10)

    async def send():
        sent = 0
        try:
            while sent < body_len:
                n = min(len(chunk), body_len - sent)
                writer.write(chunk[:n])
                await writer.drain()
                sent += n
        except (ConnectionError, OSError):
            pass

    sender = None
    try:
        deadline = started + seconds
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=1.0)
        except asyncio.TimeoutError:
            line = None
        if line is None or line.split()[1:2] == [b"100"]:
            if line is not None:
                await reader.readline()  # the blank line after `100 Continue`
            sender = asyncio.create_task(send())
            line = await asyncio.wait_for(reader.readline(), timeout=max(0.1, deadline - time.monotonic()))
        status = line.split()[1].decode() if line else "closed"
        out.append((status, time.monotonic() - started, ""))
    except asyncio.TimeoutError:
        out.append(("held", time.monotonic() - started, ""))
    except (ConnectionError, OSError) as e:
        out.append(("reset", time.monotonic() - started, str(e)))
    finally:
        if sender:
            sender.cancel()
        writer.close()


async def main():
    addr, path, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    body_len = int(float(sys.argv[5]) * (1 << 20)) if len(sys.argv) > 5 else 8 << 20
    host, port = addr.rsplit(":", 1)
    out = []
    await asyncio.gather(*(one(host, int(port), path, body_len, seconds, out) for _ in range(n)))
    counts = Counter(s for s, _, _ in out)
    refused = sorted(t for s, t, _ in out if s in ("503", "429"))
    p99 = refused[min(len(refused) - 1, int(0.99 * len(refused)))] * 1e3 if refused else float("nan")
    print(f"held clients: {n} x {body_len >> 20} MiB bodies for {seconds:.0f} s: "
          + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
          + f"; refused answered in p99 {p99:.1f} ms")


asyncio.run(main())
