#!/usr/bin/env python3
"""A TCP relay that delays every chunk, for the network-namespace test harness (netns.rs).

It listens on --listen HOST:PORT, connects each client to --upstream HOST:PORT, and copies
both directions, writing each chunk --delay-ms after it was read: pipelined (later reads are
never stalled by a held chunk), in order, and with EOF (a half-close) forwarded after the data
before it. A failed upstream connect closes the client. It prints "ready" once it listens,
and exits when its standard input closes, so it never outlives the test that started it.
Standard library only; it must never reach any address but the two it is given.
"""

import argparse
import asyncio
import os
import sys
import threading

QUEUE_BOUND = 4096  # chunks held per direction; a full queue stops reading (backpressure)
CHUNK = 64 * 1024


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk (and the EOF) held for `delay` seconds."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(QUEUE_BOUND)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, None))

    async def write_side():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:  # the reading side broke: abort the other end too
                writer.transport.abort()
                return
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read_side())
    try:
        await write_side()
    except (ConnectionError, OSError):
        writer.transport.abort()
    finally:
        reading.cancel()


async def handle(client_reader, client_writer, upstream, delay):
    host, port = upstream
    try:
        up_reader, up_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.transport.abort()
        return
    try:
        await asyncio.gather(
            pump(client_reader, up_writer, delay),
            pump(up_reader, client_writer, delay),
        )
    finally:
        up_writer.close()
        client_writer.close()


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def exit_when_stdin_closes():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=address, required=True)
    parser.add_argument("--upstream", type=address, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args()
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.upstream, delay),
        args.listen[0],
        args.listen[1],
        reuse_address=True,
    )
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
