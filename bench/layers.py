"""Which Redis channel layer holds N concurrent streams? `python -m bench.layers [--n 200] [--seconds 5]`.

N conversations, each a group with one receiving "socket" channel and one sender emitting
20 messages a second (a reply streaming at 20 tokens/s), all in one process as in one daphne
process. Reports messages lost and the delivery latency percentiles for each layer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer


async def run(layer, n: int, seconds: float, rate: float) -> dict[str, float]:
    latencies: list[float] = []
    received = [0] * n
    sent = [0] * n
    channels = []
    for i in range(n):
        channel = await layer.new_channel()
        await layer.group_add(f"g{i}", channel)
        channels.append(channel)

    async def receiver(i: int) -> None:
        while True:
            message = await layer.receive(channels[i])
            latencies.append(time.perf_counter() - message["t"])
            received[i] += 1

    async def sender(i: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await layer.group_send(f"g{i}", {"type": "chat.delta", "t": time.perf_counter(), "text": "word "})
            sent[i] += 1
            await asyncio.sleep(1 / rate)

    receivers = [asyncio.create_task(receiver(i)) for i in range(n)]
    try:
        await asyncio.wait_for(asyncio.gather(*(sender(i) for i in range(n))), timeout=seconds * 4)
        status = "ok"
    except (TimeoutError, Exception) as exc:  # a hung or failing layer is the result being measured
        status = f"{type(exc).__name__}: {exc}"[:120]
    await asyncio.sleep(2)  # let deliveries drain
    for task in receivers:
        task.cancel()
    lat = sorted(latencies) or [float("nan")]
    total_sent, total_received = sum(sent), sum(received)
    return {
        "status": status,
        "sent": total_sent,
        "received": total_received,
        "lost": total_sent - total_received,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1] if len(lat) > 1 else float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()
    for name, factory in (
        ("RedisPubSubChannelLayer", lambda: RedisPubSubChannelLayer(hosts=[args.redis])),
        ("RedisChannelLayer", lambda: RedisChannelLayer(hosts=[args.redis])),
    ):
        result = await run(factory(), args.n, args.seconds, args.rate)
        print(
            f"{name:26} N={args.n}: "
            + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
