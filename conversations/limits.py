"""Per-user limits checked before a provider is called: message rate and daily token quota.

Counters live in the cache (Redis in production, so every process shares them); the daily
token count is rebuilt from stored usage whenever the cache has lost it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce, Length
from django.utils import timezone

from .caching import cache
from .models import Message, UsageRecord, UserQuota

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry_after: float | None


def in_words(seconds: float) -> str:
    """A wait for a person: `45 s`, `12 min`, `10 h 44 min`."""
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def parse_rate(rate: str) -> tuple[int, int]:
    """`20/m` -> (20, 60); `100/5m` -> (100, 300). Raises ValueError on nonsense."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*", rate)
    if not match:
        raise ValueError(f"Bad rate {rate!r}: use e.g. 20/m, 100/h, 10/5m.")
    count, multiple, unit = match.groups()
    return int(count), int(multiple or 1) * UNITS[unit]


# On Redis, a send's rate counter is one round trip (MULTI: SET NX EX, INCR, EXEC) instead of two
# (`add`, then django-redis's `incr`, an EVAL), on the thread that every send of the process queues on.
# False: the two (the benchmark's `rate-two-trips` variant).
ONE_TRIP = True


def _count(key: str, timeout: int) -> int:
    """Add one to the counter `key` (made with `timeout` seconds to live if missing); the new count."""
    client: Any = getattr(cache, "client", None)
    if ONE_TRIP and hasattr(client, "get_client"):  # django-redis
        full = client.make_key(key)
        with client.get_client(write=True).pipeline(transaction=True) as pipe:
            pipe.set(full, 0, nx=True, ex=timeout)
            pipe.incr(full)
            return int(pipe.execute()[1])
    cache.add(key, 0, timeout=timeout)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=timeout)
        return 1


def check_rate(user_id: int) -> Refusal | None:
    """Count one message against the user's rate; a Refusal when over it (fixed windows)."""
    limit, window = parse_rate(settings.CHAT_RATE_LIMIT)
    now = time.time()
    start = int(now // window) * window
    count = _count(f"chat:rate:{user_id}:{window}:{start}", window + 5)
    if count > limit:
        wait = max(1.0, start + window - now)
        return Refusal("rate_limited", f"You are sending messages too fast. Try again in {in_words(wait)}.", wait)
    return None


def daily_quota(user_id: int) -> int:
    """The user's daily token quota: their override, else CHAT_DAILY_TOKEN_QUOTA (0 = none)."""
    override = UserQuota.objects.filter(user_id=user_id).values_list("daily_token_quota", flat=True).first()
    return override if override is not None else settings.CHAT_DAILY_TOKEN_QUOTA


def _day_start() -> dt.datetime:
    return timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)


def _quota_key(user_id: int) -> str:
    return f"chat:tokens:{user_id}:{_day_start().date().isoformat()}"


def tokens_used_today(user_id: int) -> int:
    """Input + output tokens of the user's replies, summaries and titles since midnight UTC (cache, else
    stored usage)."""
    key = _quota_key(user_id)
    used = cache.get(key)
    if used is None:
        # A reply the provider reported no usage for (stopped, cut, interrupted) still cost its
        # text: count it roughly (a token per four characters) rather than as free.
        output = Coalesce(F("output_tokens"), Length("content") / 4)
        used = Message.objects.filter(
            conversation__owner_id=user_id, role=Message.Role.ASSISTANT, created_at__gte=_day_start()
        ).aggregate(total=Coalesce(Sum(Coalesce(F("input_tokens"), 0) + output), 0))["total"]
        # Summaries and titles are the user's too (replies are counted above, from their rows), and so
        # are calls with no stored reply (the API's stateless requests).
        used += (
            UsageRecord.objects.filter(user_id=user_id, created_at__gte=_day_start())
            .filter(Q(kind__in=[UsageRecord.Kind.SUMMARY, UsageRecord.Kind.TITLE]) | Q(message__isnull=True))
            .aggregate(total=Coalesce(Sum(F("input_tokens") + F("output_tokens")), 0))["total"]
        )
        cache.add(key, used, timeout=86400 + 60)
    return int(used)


def check_quota(user_id: int, quota: int | None = None) -> Refusal | None:
    """A Refusal when the user has spent their tokens for today (`quota`: theirs, if already known)."""
    if quota is None:
        quota = daily_quota(user_id)
    if not quota:
        return None
    if tokens_used_today(user_id) >= quota:
        wait = (_day_start() + dt.timedelta(days=1) - timezone.now()).total_seconds()
        return Refusal(
            "quota_exceeded",
            f"You have used today's {quota:,} tokens. The quota resets at midnight UTC, in {in_words(wait)}.",
            wait,
        )
    return None


def record_usage(user_id: int, tokens: int) -> None:
    """Add a finished reply's tokens to today's counter, if there is one.

    A missing counter stays missing: the reply's row is stored already, so the next quota check
    rebuilds the counter from stored usage with this reply in it. (Rebuilding here instead cost an
    aggregate query on the first reply of every user's day, quota or not.)
    """
    if tokens <= 0:
        return
    with contextlib.suppress(ValueError):  # no counter: see above
        cache.incr(_quota_key(user_id), tokens)
