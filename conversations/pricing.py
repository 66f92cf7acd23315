"""The model registry's answers: which models a user may use, which model a thread talks to, what a call costs."""

from __future__ import annotations

import enum
import functools
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Q, QuerySet

from .llm.base import Usage
from .models import ChatModel, Conversation, Message, Persona, from_row, quoted

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

MILLION = Decimal(1_000_000)
# Costs are stored to the hundred-millionth of a dollar, shown to the millionth.
COST_PLACES = Decimal("0.00000001")


def models_for_user(user: AbstractBaseUser | int) -> QuerySet[ChatModel]:
    """Active registry models the user may use (a model with no groups is for everyone)."""
    user_id = user if isinstance(user, int) else user.pk
    return (
        ChatModel.objects.filter(is_active=True)
        .filter(Q(groups__isnull=True) | Q(groups__user=user_id))
        .distinct()
        .order_by("name")
    )


class _Unread(enum.Enum):
    UNREAD = "unread"


# `may_use(known=...)`'s default: the answer was not read with another query, so `may_use` reads it.
UNREAD = _Unread.UNREAD


def may_use(
    user_id: int | None, spec: str, *, listed_only: bool = False, known: UseRow | None | _Unread = UNREAD
) -> bool:
    """May the user talk to `provider:model`?

    A model in the registry: if it is active and the user is in one of its groups (or it has none).
    A model not in the registry: only as a persona's own model (`listed_only=False`), so that
    setups from before the registry keep running. `known`: the answer row of `may_use_columns` for
    `spec`, read already (None: not listed), so that no query is needed.
    """
    row: UseRow | None
    if known is UNREAD:
        with connection.cursor() as cursor:
            cursor.execute(_may_use_sql(), [user_id, spec])
            row = cursor.fetchone()
    else:
        row = known
    if row is None:
        return not listed_only
    is_active, has_groups, in_a_group = row
    return bool(is_active) and (not has_groups or bool(in_a_group))


# `may_use_columns`' values for a listed model: active, has groups, the user is in one of them.
UseRow = tuple[object, object, object]


def may_use_columns(user: str) -> str:
    """The three columns `may_use` decides by, for the registry's row aliased `m` and the user whose id
    is the SQL expression `user` (a parameter, or a column of the caller's query)."""
    from django.contrib.auth import get_user_model

    qn = connection.ops.quote_name
    groups = ChatModel.groups.through
    members = get_user_model().groups.through
    model_of, group_of = quoted(groups, "chatmodel"), quoted(groups, "group")
    member_group, member_user = quoted(members, "group"), quoted(members, "user")
    of_model = f"g.{model_of} = m.{quoted(ChatModel, 'pk')}"
    return (
        f"m.{quoted(ChatModel, 'is_active')},"
        f" EXISTS (SELECT 1 FROM {qn(groups._meta.db_table)} g WHERE {of_model}),"
        f" EXISTS (SELECT 1 FROM {qn(groups._meta.db_table)} g JOIN {qn(members._meta.db_table)} ug"
        f" ON ug.{member_group} = g.{group_of} WHERE {of_model} AND ug.{member_user} = {user})"
    )


@functools.cache
def _may_use_sql() -> str:
    """`may_use` in one query (every send asks, unless its lock read the answer). Params: the user's
    id, the model's name."""
    return (
        f"SELECT {may_use_columns('%s')}"  # noqa: S608 - names from the models
        f" FROM {connection.ops.quote_name(ChatModel._meta.db_table)} m WHERE m.{quoted(ChatModel, 'name')} = %s"
    )


def thread_model(conversation: Conversation, persona: Persona) -> str:
    """The model a new reply in this thread uses: the one picked for it, where the persona allows a pick."""
    if conversation.model and persona.allow_model_choice:
        return conversation.model
    return persona.resolved_model()


def cost_of(spec: str, usage: Usage, *, entry: ChatModel | None = None) -> Decimal:
    """What a call cost in USD at the registry's prices now (zero for a model not in the registry).

    Input tokens not read from the cache at `input_price`, cached ones at `cached_input_price`,
    tokens written to the cache at `cache_write_price` (blank: `input_price`), output at `output_price`.
    """
    if entry is None:
        entry = _prices(spec)
    if entry is None:
        return Decimal(0)
    total_in = usage.input_tokens or 0
    cached = min(usage.cached_input_tokens or 0, total_in)
    written = min(usage.cache_write_tokens or 0, total_in - cached)
    fresh = total_in - cached - written
    write_price = entry.cache_write_price if entry.cache_write_price is not None else entry.input_price
    dollars = (
        fresh * entry.input_price
        + cached * entry.cached_input_price
        + written * write_price
        + (usage.output_tokens or 0) * entry.output_price
    ) / MILLION
    return dollars.quantize(COST_PLACES)


def _prices(spec: str) -> ChatModel | None:
    """The registry's entry for `spec` with only its prices (the rest deferred), or None."""
    sql, fields = _prices_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [spec])
        row = cursor.fetchone()
    return from_row(ChatModel, fields, row) if row else None


@functools.cache
def _prices_sql() -> tuple[str, list[Any]]:
    """`_prices`' query, plain: a reply's end read its model's row through the ORM in about 1 ms of compiling."""
    names = ("id", "input_price", "cached_input_price", "cache_write_price", "output_price")
    fields = [ChatModel._meta.get_field(name) for name in names]
    sql = (
        f"SELECT {', '.join(quoted(ChatModel, name) for name in names)}"  # noqa: S608 - names from the model
        f" FROM {connection.ops.quote_name(ChatModel._meta.db_table)} WHERE {quoted(ChatModel, 'name')} = %s"
    )
    return sql, fields


def cost_text(cost: Decimal | None) -> str | None:
    """A cost as the protocol's decimal string in US dollars (six places), or None."""
    if cost is None:
        return None
    return str(cost.quantize(Decimal("0.000001")))


def usage_payload(reply: Message | None) -> dict[str, object]:
    """The `end` frame's `usage`: the provider's counts (None where it said nothing) and the cost."""
    if reply is None:
        return {"input_tokens": None, "output_tokens": None, "cached_input_tokens": None, "cost": None}
    return {
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "cached_input_tokens": reply.cached_input_tokens,
        "cost": cost_text(reply.cost),
    }
