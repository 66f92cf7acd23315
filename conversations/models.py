"""Personas people chat with, their conversations, one row per message, the model registry and usage."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connection, models, transaction
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.urls import reverse
from django.utils import timezone

PRICE: dict[str, Any] = {"max_digits": 12, "decimal_places": 6, "default": Decimal(0)}


class ChatModel(models.Model):
    """A model people may chat with, its limits and its prices per million tokens (staff keep the list)."""

    name = models.CharField(max_length=200, unique=True, help_text="provider:model, e.g. openai:gpt-4o-mini.")
    label = models.CharField(max_length=100, blank=True, help_text="Shown in the model picker. Blank: the name.")
    context_window = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens the model reads.")
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens it may write.")
    input_price = models.DecimalField(**PRICE, help_text="USD per million input tokens not read from the cache.")
    cached_input_price = models.DecimalField(**PRICE, help_text="USD per million input tokens read from the cache.")
    output_price = models.DecimalField(**PRICE, help_text="USD per million output tokens.")
    cache_write_price = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="USD per million tokens written to the cache (Anthropic bills 1.25x input). Blank: the input price.",
    )
    supports_images = models.BooleanField(default=False)
    supports_pdf = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    groups = models.ManyToManyField(
        Group, blank=True, related_name="chat_models", help_text="Who may use it. None: everyone."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return self.label or self.name


class Persona(models.Model):
    """A curated assistant: system prompt, model and settings, chosen by staff."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True, help_text="Shown to people choosing a persona.")
    system_prompt = models.TextField(blank=True, help_text="Sent to the model first in every request; never shown.")
    model = models.CharField(
        max_length=200,
        blank=True,
        help_text="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-haiku-4-5, offline:demo. "
        "Blank: CHAT_DEFAULT_MODEL.",
    )
    allow_model_choice = models.BooleanField(
        default=False, help_text="People may pick another of the models they may use (the model picker)."
    )
    temperature = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    context_budget_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="History budget in tokens. Blank: CHAT_CONTEXT_BUDGET_TOKENS."
    )
    is_active = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    groups = models.ManyToManyField(
        Group, blank=True, related_name="personas", help_text="Who may use it. None: everyone."
    )
    position = models.PositiveIntegerField(default=0, help_text="Order in the persona picker.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_persona"),
        ]

    def __str__(self) -> str:
        return self.name

    def resolved_model(self) -> str:
        """The `provider:model` this persona talks to."""
        return self.model or settings.CHAT_DEFAULT_MODEL

    def budget_tokens(self) -> int:
        """The history budget of a request, in tokens."""
        return self.context_budget_tokens or settings.CHAT_CONTEXT_BUDGET_TOKENS


class Conversation(models.Model):
    """A thread owned by one user, talking to one persona."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # The model picked for this thread (where the persona allows a choice); blank: the persona's.
    model = models.CharField(max_length=200, blank=True)
    title_is_auto = models.BooleanField(default=True)
    pinned = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # The end of the active path (root to leaf): what the page shows and what a request is built from.
    active_leaf = models.ForeignKey("Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Set while a worker summarizes: the claim that keeps two workers from doing it twice.
    summarizing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "-updated_at"])]
        # Not implied by is_staff: only people given it (and superusers) read others' threads in the admin.
        permissions = [("read_others_conversations", "Can read other people's conversations (admin)")]

    def __str__(self) -> str:
        return self.title or "New chat"

    def get_absolute_url(self) -> str:
        return reverse("conversation", args=[self.id])


class Message(models.Model):
    """One user message or one assistant reply."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The tree: a user message's parent is the reply it answers (None for a first message); a reply's
    # parent is the user message it answers. Siblings are versions (edits, regenerations).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    # The child last on the active path below this message: switching to this message continues there.
    active_child = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Of input_tokens: read from the provider's prompt cache, and written to it (Anthropic).
    cached_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    cache_write_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True, help_text="USD.")
    client_id = models.UUIDField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    # Set by `stop` from any socket in any process; the reply's own process reads it (durable stop).
    stop_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Touched by every flush: a streaming row that stops being touched has lost its process.
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "client_id"], name="unique_client_id_per_conversation"),
            # One reply at a time per conversation, held by the database itself.
            models.UniqueConstraint(
                fields=["conversation"], condition=Q(status="streaming"), name="one_streaming_reply_per_conversation"
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "parent"], name="message_children"),
            models.Index(fields=["status"], condition=Q(status="streaming"), name="streaming_messages"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk}"

    def as_event(self) -> dict[str, object]:
        """The message as the protocol's `message` payload (`attachments` only when it has files)."""
        event: dict[str, object] = {
            "id": self.pk,
            "role": self.role,
            "content": self.content,
            "client_id": str(self.client_id) if self.client_id else None,
            "parent_id": self.parent_id,
        }
        files = getattr(self, "files", None)
        if files:
            event["attachments"] = [f.as_json() for f in files]
        return event


class Summary(models.Model):
    """What the summarizer wrote about a path from its root through `through` (inclusive).

    A branch uses a summary only when `through` is on its own path: a fork made at or before
    `through` never carries it.
    """

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="summaries")
    through = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="summary")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "summaries"

    def __str__(self) -> str:
        return f"summary through #{self.through_id}"


class UserQuota(models.Model):
    """A per-user override of CHAT_DAILY_TOKEN_QUOTA, set by staff in the admin."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_quota")
    daily_token_quota = models.PositiveIntegerField(help_text="Tokens (input + output) per day; 0 means no limit.")

    def __str__(self) -> str:
        return f"{self.user}: {self.daily_token_quota}/day"


class UsageRecord(models.Model):
    """One provider call (a reply, a summary, a title): its tokens and its cost at the prices of that moment.

    Saving a new record adds it to its day's `DailyUsage` row in the same transaction; a stored record
    never changes. `bulk_create` skips that (the account deletion's fold and the benchmark's seed add
    to the rollup themselves).
    """

    class Kind(models.TextChoices):
        REPLY = "reply"
        SUMMARY = "summary"
        TITLE = "title"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_usage")
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True, blank=True)
    persona = models.ForeignKey(Persona, on_delete=models.SET_NULL, null=True, blank=True)
    message = models.OneToOneField(Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    model = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    calls = models.PositiveIntegerField(
        default=1, help_text="Provider calls this row stands for: 1, or a deleted account's daily total."
    )
    # Input includes cached and cache-write tokens; where the provider said nothing, the site's estimate.
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False, help_text="The provider reported no usage: counts are estimates.")
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0), help_text="USD.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["created_at"], name="usage_created"),
            models.Index(fields=["user", "created_at"], name="usage_user_created"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} {self.created_at:%Y-%m-%d}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Store a new record and add it to its day's rollup, both or neither."""
        if not self._state.adding:
            raise ValueError("A usage record never changes once stored (the daily rollup holds its numbers).")
        # Inside a caller's transaction (a reply's end) no savepoint of its own: a failure here fails
        # the whole transaction anyway, and the pair of statements was two of a reply's nine at its end.
        with transaction.atomic(savepoint=False):
            super().save(*args, **kwargs)
            DailyUsage.add(self)

    @classmethod
    def close_reply_and_store(
        cls, close_sql: str, close_params: list[Any], conversation_id: uuid.UUID, **numbers: Any
    ) -> bool:
        """PostgreSQL: close a reply (`close_sql`, an UPDATE of its row while it still streams, with
        `close_params`) and store its usage record with its day's rollup, in one statement: the UPDATE,
        the INSERT … SELECT of `store_for_conversation` and `DailyUsage.add`'s upsert as data-modifying
        parts of one `WITH`, each taking what the one before returned. One round trip, atomic as any
        statement is, instead of four and the transaction's BEGIN and COMMIT (docs/performance.md).
        Whether the reply was still streaming: if not, nothing is written.
        """
        record = cls(conversation_id=conversation_id, **numbers)
        if timezone.is_naive(record.created_at):
            record.created_at = timezone.make_aware(record.created_at, dt.UTC)
        sql, given = _close_and_record_sql(close_sql)
        fields = {f.attname: f for f in DailyUsage._meta.concrete_fields}
        daily = {  # in the order of the upsert's values that are not taken from the record's row
            "day": record.created_at.astimezone(dt.UTC).date(),
            "model": record.model,
            "kind": record.kind,
            **_summed(record),
        }
        params = [
            *close_params,
            *(f.get_db_prep_save(getattr(record, f.attname), connection) for f in given),
            Conversation._meta.pk.get_db_prep_value(conversation_id, connection),
            *(fields[name].get_db_prep_save(value, connection) for name, value in daily.items()),
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return bool(row and row[0])

    @classmethod
    def store_for_conversation(cls, conversation_id: uuid.UUID, **numbers: Any) -> None:
        """Store a record of a call in a thread for the thread's owner and persona as they are now, and add
        it to its day's rollup: what `save` does, in two statements and no read of the thread (the INSERT
        takes the owner and persona from the thread's row: `INSERT … SELECT … RETURNING`). A reply's end
        calls this inside its transaction. `numbers`: the record's other fields (message_id, model, kind,
        the token counts, estimated, cost). Nothing is stored if the thread is gone.
        """
        record = cls(conversation_id=conversation_id, **numbers)
        if timezone.is_naive(record.created_at):
            record.created_at = timezone.make_aware(record.created_at, dt.UTC)
        sql, given = _record_insert_sql()
        params = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in given]
        params.append(Conversation._meta.pk.get_db_prep_value(conversation_id, connection))
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            if row is None:
                return
            record.user_id, record.persona_id = row
            DailyUsage.add(record)


def quoted(model: type[models.Model], name: str) -> str:
    """The column of `model`'s field `name` (or its attname, or "pk"), quoted for plain SQL."""
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    return connection.ops.quote_name(str(field.column))  # type: ignore[union-attr]


def from_row(model: type[models.Model], fields: list[models.Field[Any, Any]], values: tuple[Any, ...]) -> Any:
    """A model instance from its columns read by plain SQL, converted as the ORM converts them
    (booleans and decimals on SQLite, say). Fields not in `fields` are deferred."""
    converted = {}
    for f, (col, converters), value in zip(fields, _converters(model, tuple(fields)), values, strict=True):
        for convert in converters:
            value = convert(value, col, connection)
        converted[f.attname] = value
    # `from_db` takes a subset's values in the model's order of fields, whatever order they were read in.
    names = [f.attname for f in model._meta.concrete_fields if f.attname in converted]
    return model.from_db(connection.alias, names, [converted[name] for name in names])


@functools.cache
def _converters(model: type[models.Model], fields: tuple[models.Field[Any, Any], ...]) -> list[tuple[Any, list[Any]]]:
    """Per field: its column expression and the converters the ORM applies to its values."""
    cols = [f.get_col(model._meta.db_table) for f in fields]
    return [
        (col, [*connection.ops.get_db_converters(col), *f.get_db_converters(connection)])
        for f, col in zip(fields, cols, strict=True)
    ]


def insert_rows(objs: list[models.Model]) -> None:
    """`bulk_create(objs)` of new rows of one model with an automatic primary key, in plain SQL (one
    INSERT … RETURNING): the ORM's compile of it cost about 1 ms a send. Sets each object's pk as
    `bulk_create` does, and sends no signals (nothing listens for these rows')."""
    model = type(objs[0])
    sql, fields = _insert_sql(model, len(objs))
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        # One statement's automatic keys grow in the order of its rows (SQLite's rowid and
        # PostgreSQL's sequence alike); the order RETURNING lists them in is not promised.
        pks = sorted(row[0] for row in cursor.fetchall())
    for obj, pk in zip(objs, pks, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = connection.alias


@functools.cache
def _insert_sql(model: type[models.Model], n: int) -> tuple[str, list[models.Field[Any, Any]]]:
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)}"  # noqa: S608 - names from the model
        f" ({', '.join(connection.ops.quote_name(str(f.column)) for f in fields)})"
        f" VALUES {', '.join([row] * n)} RETURNING {quoted(model, 'pk')}"
    )
    return sql, fields


@functools.cache
def _record_insert_sql() -> tuple[str, list[models.Field[Any, Any]]]:
    """`store_for_conversation`'s INSERT, and the fields whose values it takes (then the thread's id)."""
    qn = connection.ops.quote_name
    taken = ("user", "conversation", "persona")
    given = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key and f.name not in taken]
    columns = [quoted(UsageRecord, name) for name in taken] + [qn(str(f.column)) for f in given]
    c = Conversation
    sql = (
        f"INSERT INTO {qn(UsageRecord._meta.db_table)} ({', '.join(columns)})"  # noqa: S608 - names from the models
        f" SELECT c.{quoted(c, 'owner')}, c.{quoted(c, 'pk')}, c.{quoted(c, 'persona')}, "
        + ", ".join(["%s"] * len(given))
        + f" FROM {qn(c._meta.db_table)} c WHERE c.{quoted(c, 'pk')} = %s"
        f" RETURNING {quoted(UsageRecord, 'user')}, {quoted(UsageRecord, 'persona')}"
    )
    return sql, given


def _daily_columns() -> tuple[str, list[str], list[str]]:
    """The rollup's table, its key columns and its summed columns (SUMMED), quoted."""
    key = [quoted(DailyUsage, name) for name in ("day", "user", "model", "persona_ref", "kind")]
    return connection.ops.quote_name(DailyUsage._meta.db_table), key, [quoted(DailyUsage, n) for n in SUMMED]


@functools.cache
def _close_and_record_sql(close_sql: str) -> tuple[str, list[models.Field[Any, Any]]]:
    """`close_reply_and_store`'s statement (PostgreSQL): `close_sql`, then `_record_insert_sql`'s INSERT
    (only if the UPDATE closed the row), then the daily upsert of what it returned. Params: the UPDATE's,
    the record's `given` fields, the thread's id, then the rollup's day, model, kind and SUMMED values."""
    insert, given = _record_insert_sql()
    head, _, rest = insert.partition(" WHERE ")
    table, key, sums = _daily_columns()
    user, persona = quoted(UsageRecord, "user"), quoted(UsageRecord, "persona")
    sql = (
        f"WITH closed AS ({close_sql} RETURNING 1),"
        f" record AS ({head} WHERE EXISTS (SELECT 1 FROM closed) AND {rest}),"
        f" daily AS (INSERT INTO {table} ({', '.join(key + sums)})"  # noqa: S608 - names from the models
        f" SELECT %s, r.{user}, %s, COALESCE(r.{persona}, 0), %s, {', '.join(['%s'] * len(sums))} FROM record r"
        f" WHERE true ON CONFLICT ({', '.join(key)})"
        f" DO UPDATE SET {', '.join(f'{c} = {table}.{c} + excluded.{c}' for c in sums)})"
        " SELECT COUNT(*) FROM closed"
    )
    return sql, given


SUMMED = ("calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost")


def _summed(record: UsageRecord) -> dict[str, Any]:
    """A record's numbers as its day's rollup adds them (SUMMED, in order)."""
    return {f: Decimal(str(record.cost or 0)) if f == "cost" else int(getattr(record, f) or 0) for f in SUMMED}


class DailyUsage(models.Model):
    """The usage records of one UTC day summed per user, model, persona and kind: what /admin/usage/ reads.

    Kept in step by `UsageRecord.save` (in the record's transaction) and by the account deletion's fold,
    so its sums always equal the records'.
    """

    day = models.DateField(help_text="UTC.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    # The persona's id, 0 for none; not a foreign key: a key column must never be NULL (a unique
    # constraint does not compare NULLs, so the upsert would add rows), and a deleted persona's rows
    # keep its id and show under their kind, as records whose persona was set to NULL do.
    persona_ref = models.BigIntegerField(default=0)
    kind = models.CharField(max_length=16, choices=UsageRecord.Kind.choices)
    calls = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_input_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=18, decimal_places=8, default=Decimal(0), help_text="USD.")

    class Meta:
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(fields=["day", "user", "model", "persona_ref", "kind"], name="usage_daily_key")
        ]
        # Every column the page reads, day first: a period is one range of this index, never a lookup
        # of each row in the table (SQLite picks the day-first unique index for any period, and those
        # lookups made a year of rows several times slower: docs/performance.md, "Usage page").
        indexes = [
            models.Index(fields=["day", "model", "persona_ref", "kind", "user", *SUMMED], name="usage_daily_cover")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.kind} {self.model}"

    @classmethod
    def add(cls, record: UsageRecord) -> None:
        """Add a record's numbers to its row, in one statement: an INSERT that, where the row exists,
        adds to it instead (`ON CONFLICT … DO UPDATE`, PostgreSQL and SQLite alike). Two writers of the
        same row cannot both insert it. Call it inside the record's transaction.

        Plain SQL: the ORM has no upsert of increments, and its UPDATE-then-INSERT was two statements
        (and a savepoint pair on a new day) of a reply's end (docs/performance.md).
        """
        created = record.created_at
        if timezone.is_naive(created):
            created = timezone.make_aware(created, dt.UTC)
        fields = {f.attname: f for f in cls._meta.concrete_fields}
        values = {  # in the order of `_daily_add_sql`'s columns
            "day": created.astimezone(dt.UTC).date(),
            "user_id": record.user_id,
            "model": record.model,
            "persona_ref": record.persona_id or 0,
            "kind": record.kind,
            **_summed(record),
        }
        params = [fields[name].get_db_prep_save(value, connection) for name, value in values.items()]
        with connection.cursor() as cursor:
            cursor.execute(_daily_add_sql(), params)

    @classmethod
    def rebuild(cls) -> int:
        """Refill the whole table from the records (after a bulk load, not while calls are recorded); rows made."""
        groups = (
            UsageRecord.objects.annotate(the_day=TruncDate("created_at", tzinfo=dt.UTC), ref=Coalesce("persona_id", 0))
            .values_list("the_day", "user_id", "model", "ref", "kind")
            .annotate(*(Sum(f) for f in SUMMED))
            .order_by()
        )
        made = 0
        with transaction.atomic():
            DailyUsage.objects.all().delete()
            batch: list[DailyUsage] = []
            for day, user_id, model, ref, kind, *sums in groups.iterator(chunk_size=5000):
                numbers = {f: n or 0 for f, n in zip(SUMMED, sums, strict=True)}
                batch.append(DailyUsage(day=day, user_id=user_id, model=model, persona_ref=ref, kind=kind, **numbers))
                if len(batch) >= 5000:
                    made += len(DailyUsage.objects.bulk_create(batch))
                    batch = []
            made += len(DailyUsage.objects.bulk_create(batch))
        return made


@functools.cache
def _daily_add_sql() -> str:
    """`DailyUsage.add`'s upsert: the key, then the sums (SUMMED), as values; where the row exists, added."""
    table, key, sums = _daily_columns()
    added = {c: f"{table}.{c} + excluded.{c}" for c in sums}
    if connection.vendor == "sqlite":  # decimals are NUMERIC there: cast the sum as the ORM's F() increment did
        cost = quoted(DailyUsage, "cost")
        added[cost] = f"CAST({added[cost]} AS NUMERIC)"
    columns = key + sums
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608 - names from the model
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(f'{c} = {v}' for c, v in added.items())}"
    )


class ConversationRead(models.Model):
    """One reading of another person's conversation in the admin: who, whose, when (the audit trail).

    Names are copied, and the links set to null when a user or thread is deleted: the record outlives them.
    """

    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    reader_name = models.CharField(max_length=150)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    owner_name = models.CharField(max_length=150)
    conversation = models.ForeignKey(Conversation, on_delete=models.SET_NULL, null=True, related_name="+")
    conversation_ref = models.UUIDField()
    read_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-read_at"]

    def __str__(self) -> str:
        return f"{self.reader_name} read {self.owner_name}'s {self.conversation_ref}"


from .attachment import Attachment  # noqa: E402 - the model lives in its own module

__all__ = [
    "Attachment",
    "Conversation",
    "ConversationRead",
    "DailyUsage",
    "Message",
    "Persona",
    "UsageRecord",
    "UserQuota",
]
