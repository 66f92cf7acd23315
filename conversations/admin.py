"""Admin: personas are curated (and previewed) here; conversations are read-only for moderation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe

from . import pricing
from .llm import ChatRequest, ProviderError, Usage, complete_once, configured_providers, provider_for, split_model
from .models import Conversation, ConversationRead, Message, Persona, UserQuota

STATS_DAYS = 30
# Where the streamed reply goes in the rendered preview page.
STREAM_MARKER = "<!--preview-stream-->"


def _is_default_in_db(persona: Persona) -> bool:
    return bool(persona.pk) and Persona.objects.filter(pk=persona.pk, is_default=True).exists()


class PersonaForm(forms.ModelForm):
    class Meta:
        model = Persona
        fields = [
            "name",
            "slug",
            "description",
            "system_prompt",
            "model",
            "allow_model_choice",
            "temperature",
            "max_output_tokens",
            "context_budget_tokens",
            "is_active",
            "is_default",
            "groups",
            "position",
        ]
        # Plain checkboxes: the admin's two-box filter widget puts aria-label on a bare <span> (axe: serious).
        widgets = {"groups": forms.CheckboxSelectMultiple}

    def _get_validation_exclusions(self) -> set[str]:
        # The one-default constraint holds through save_model, which clears the old default first.
        return {*super()._get_validation_exclusions(), "is_default"}  # type: ignore[misc]

    def clean_model(self) -> str:
        spec = self.cleaned_data["model"].strip()
        if not spec:
            return spec
        try:
            provider, _ = split_model(spec)
        except ProviderError as exc:
            raise forms.ValidationError(
                f"{exc.message} Providers: openai, anthropic, offline (e.g. openai:gpt-4o-mini)."
            ) from exc
        if provider not in configured_providers():
            configured = ", ".join(sorted(configured_providers()))
            raise forms.ValidationError(
                f"The {provider} provider is not configured on this site (configured: {configured}). "
                f"Set its API key or base URL (see the README) and restart, or pick a configured provider."
            )
        return spec

    def clean_temperature(self) -> float | None:
        value = self.cleaned_data.get("temperature")
        if value is not None and not 0 <= value <= 2:
            raise forms.ValidationError("Temperature is between 0 and 2.")
        return value

    def clean_context_budget_tokens(self) -> int | None:
        value = self.cleaned_data.get("context_budget_tokens")
        if value is not None and value < 200:
            raise forms.ValidationError("A budget under 200 tokens leaves no room for a conversation.")
        return value

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("is_default"):
            # Every user falls back to the default (new chats, retired personas): it must be usable by all.
            if not data.get("is_active"):
                self.add_error("is_active", "The default persona must be active.")
            if data.get("groups"):
                self.add_error("groups", "The default persona is for everyone: leave its groups empty.")
        elif _is_default_in_db(self.instance):
            self.add_error(
                "is_default",
                "There is always exactly one default persona: make another persona the default instead.",
            )
        return data


class PersonaChangeListForm(forms.ModelForm):
    """The list page's inline edits (active, position) keep the default persona active."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The list's inputs have no <label>: name them for screen readers, per row.
        name = self.instance.name if self.instance.pk else "new persona"
        for field, label in [("is_active", "Active"), ("position", "Position")]:
            if field in self.fields:
                self.fields[field].widget.attrs["aria-label"] = f"{label}: {name}"

    def clean_is_active(self) -> bool:
        active = self.cleaned_data.get("is_active", True)
        if not active and _is_default_in_db(self.instance):
            raise forms.ValidationError("The default persona cannot be retired: make another one the default first.")
        return active


def _usage_stats(queryset: QuerySet[Persona]) -> QuerySet[Persona]:
    """Threads, messages and tokens of the last STATS_DAYS days per persona, as subqueries (no N+1)."""
    since = timezone.now() - dt.timedelta(days=STATS_DAYS)
    recent = Message.objects.filter(conversation__persona=OuterRef("pk"), created_at__gte=since).order_by()

    def per_persona(aggregate: Any) -> Coalesce:
        values = recent.values("conversation__persona").annotate(v=aggregate).values("v")
        return Coalesce(Subquery(values, output_field=IntegerField()), 0)

    return queryset.annotate(
        threads_30d=per_persona(Count("conversation", distinct=True)),
        messages_30d=per_persona(Count("id")),
        tokens_in_30d=per_persona(Sum("input_tokens")),
        tokens_out_30d=per_persona(Sum("output_tokens")),
    )


class PreviewForm(forms.Form):
    message = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        max_length=settings.CHAT_MAX_MESSAGE_CHARS,
        help_text="Sent with the persona's system prompt and settings. Nothing is stored.",
    )
    stream = forms.BooleanField(required=False, initial=True, help_text="Show the reply as it streams.")


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    form = PersonaForm
    change_form_template = "admin/conversations/persona/change_form.html"
    list_display = [
        "name",
        "slug",
        "model_display",
        "who",
        "is_active",
        "is_default",
        "position",
        "threads_30d",
        "messages_30d",
        "tokens_in_30d",
        "tokens_out_30d",
    ]
    list_display_links = ["name"]
    list_editable = ["position", "is_active"]
    list_filter = ["is_active", "is_default"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "slug", "description"]
    actions = ["activate", "retire"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "description", "is_active", "is_default", "position"]}),
        (
            "Model",
            {
                "fields": [
                    "system_prompt",
                    "model",
                    "allow_model_choice",
                    "temperature",
                    "max_output_tokens",
                    "context_budget_tokens",
                ]
            },
        ),
        ("Who may use it", {"fields": ["groups"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        return _usage_stats(super().get_queryset(request)).prefetch_related("groups")

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any) -> type[forms.ModelForm]:
        return super().get_changelist_form(request, form=PersonaChangeListForm, **kwargs)

    @admin.display(description="Model")
    def model_display(self, persona: Persona) -> str:
        return persona.model or f"default ({settings.CHAT_DEFAULT_MODEL})"

    @admin.display(description="Who may use it")
    def who(self, persona: Persona) -> str:
        return ", ".join(g.name for g in persona.groups.all()) or "Everyone"

    @admin.display(description=f"Threads ({STATS_DAYS}d)", ordering="threads_30d")
    def threads_30d(self, persona: Persona) -> int:
        return persona.threads_30d  # type: ignore[attr-defined]

    @admin.display(description=f"Messages ({STATS_DAYS}d)", ordering="messages_30d")
    def messages_30d(self, persona: Persona) -> int:
        return persona.messages_30d  # type: ignore[attr-defined]

    @admin.display(description=f"Tokens in ({STATS_DAYS}d)", ordering="tokens_in_30d")
    def tokens_in_30d(self, persona: Persona) -> int:
        return persona.tokens_in_30d  # type: ignore[attr-defined]

    @admin.display(description=f"Tokens out ({STATS_DAYS}d)", ordering="tokens_out_30d")
    def tokens_out_30d(self, persona: Persona) -> int:
        return persona.tokens_out_30d  # type: ignore[attr-defined]

    def save_model(self, request: HttpRequest, obj: Persona, form: Any, change: bool) -> None:
        # Exactly one default: choosing a new one clears the old in the same transaction.
        with transaction.atomic():
            if obj.is_default:
                Persona.objects.filter(is_default=True).exclude(pk=obj.pk).update(is_default=False)
            super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: Persona | None = None) -> bool:
        if obj is not None and obj.is_default:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # Retire, don't delete: a persona with threads is protected, and bulk delete would skip the checks.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Activate selected personas", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        count = queryset.update(is_active=True)
        self.message_user(request, f"Activated {count} persona(s).", messages.SUCCESS)

    @admin.action(
        description="Retire selected personas (their threads continue with the default)", permissions=["change"]
    )
    def retire(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        if queryset.filter(is_default=True).exists():
            self.message_user(
                request, "The default persona stays active: make another one the default first.", messages.WARNING
            )
        count = queryset.exclude(is_default=True).update(is_active=False)
        self.message_user(request, f"Retired {count} persona(s).", messages.SUCCESS)

    # -- preview: a test message, answered by the persona, stored nowhere ------------------------
    def get_urls(self) -> list[URLPattern]:
        preview = path(
            "<path:object_id>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="conversations_persona_preview",
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """Send a test message to the persona and show its reply, streamed or whole."""
        persona = self.get_object(request, object_id)
        if persona is None:
            raise Http404("No such persona.")
        if not self.has_change_permission(request, persona):
            raise PermissionDenied
        form = PreviewForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": persona,
            "persona": persona,
            "model": persona.resolved_model(),
            "form": form,
            "title": f"Preview: {persona.name}",
        }
        if request.method == "POST" and not pricing.may_use(request.user.pk, persona.resolved_model()):
            # The registry's groups hold for staff too: a preview starts a reply like any other.
            context["error"] = f"the model {persona.resolved_model()} is not available to you (its groups)."
        elif request.method == "POST" and form.is_valid():
            chat = ChatRequest(
                model="",
                system=persona.system_prompt,
                messages=[{"role": "user", "content": form.cleaned_data["message"]}],
                temperature=persona.temperature,
                max_output_tokens=persona.max_output_tokens,
            )
            if form.cleaned_data["stream"]:
                context["streaming"] = True
                context["stream_marker"] = mark_safe(STREAM_MARKER)
                page = TemplateResponse(request, "admin/conversations/persona/preview.html", context).render()
                head, _, tail = page.content.decode().partition(STREAM_MARKER)
                response = StreamingHttpResponse(
                    _stream_preview(head, tail, persona.resolved_model(), chat), content_type="text/html; charset=utf-8"
                )
                response["X-Accel-Buffering"] = "no"  # proxies must not hold the stream back
                response["Cache-Control"] = "no-store"
                return response
            try:
                text, usage = async_to_sync(complete_once)(persona.resolved_model(), chat)
            except ProviderError as exc:
                context["error"] = exc.message
            else:
                from .rendering import render_markdown  # markdown-it: loaded where it is used, not in the worker

                context.update(reply=render_markdown(text), usage=_usage_text(usage))
        return TemplateResponse(request, "admin/conversations/persona/preview.html", context)


async def _stream_preview(head: str, tail: str, spec: str, chat: ChatRequest) -> AsyncIterator[str]:
    """The preview page, with the reply's text written into it as the provider streams it."""
    yield head + '<pre class="preview-stream">'
    usage = Usage()
    try:
        provider, model = await provider_for(spec)
        async for item in provider.stream(dataclasses.replace(chat, model=model)):
            if isinstance(item, Usage):
                usage = item
            else:
                yield escape(item)
    except ProviderError as exc:
        yield f'</pre><p class="errornote">The preview failed: {escape(exc.message)}</p>'
    else:
        yield f'</pre><p class="help">{_usage_text(usage)}</p>'
    yield tail


def _usage_text(usage: Usage) -> str:
    def n(value: int | None) -> str:
        return "?" if value is None else str(value)

    return f"Usage: {n(usage.input_tokens)} tokens in, {n(usage.output_tokens)} out."


class MessageInline(admin.TabularInline):
    model = Message
    fields = readonly_fields = (
        "id",
        "role",
        "status",
        "content",
        "model",
        "input_tokens",
        "output_tokens",
        "parent_message",
        "created_at",
    )
    extra = 0
    can_delete = False

    @admin.display(description="Parent")
    def parent_message(self, message: Message) -> int | None:
        """The message it answers (or edits a sibling of): its id, without a query per row."""
        return message.parent_id

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_read_others(request)


READ_OTHERS = "conversations.read_others_conversations"
audit_log = logging.getLogger("conversations.audit")


def may_read_others(request: HttpRequest) -> bool:
    """Staff given the permission (superusers have every permission); is_staff alone is not enough."""
    user = request.user
    return user.is_active and user.is_staff and user.has_perm(READ_OTHERS)


def record_read(request: HttpRequest, conversation: Conversation) -> None:
    """Log a reading of someone else's conversation, and keep it as a ConversationRead."""
    reader = request.user
    if conversation.owner_id == reader.pk:
        return
    owner_name = conversation.owner.get_username()
    ConversationRead.objects.create(
        reader_id=reader.pk,
        reader_name=reader.get_username(),
        owner_id=conversation.owner_id,
        owner_name=owner_name,
        conversation=conversation,
        conversation_ref=conversation.pk,
    )
    audit_log.info("%s read %s's conversation %s in the admin", reader.get_username(), owner_name, conversation.pk)


class ReadOthersOnly(admin.ModelAdmin):
    """Seen only by staff with the read_others_conversations permission; nobody adds, edits or deletes."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_read_others(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_read_others(request)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOthersOnly):
    """Threads, readable only with the read_others_conversations permission, each reading recorded;
    nobody edits or deletes them here."""

    list_display = ["__str__", "owner", "persona", "message_count", "updated_at"]
    list_select_related = ["owner", "persona"]
    search_fields = ["title", "owner__username", "owner__email"]
    list_filter = ["persona"]
    fields = readonly_fields = (
        "id",
        "owner",
        "persona",
        "title",
        "created_at",
        "updated_at",
        "active_leaf",
    )
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(n_messages=Count("messages"))

    @admin.display(description="Messages", ordering="n_messages")
    def message_count(self, conversation: Conversation) -> int:
        return conversation.n_messages  # type: ignore[attr-defined]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        conversation = getattr(response, "context_data", {}).get("original") if response.status_code == 200 else None
        if isinstance(conversation, Conversation):
            record_read(request, conversation)
        return response


@admin.register(ConversationRead)
class ConversationReadAdmin(ReadOthersOnly):
    """The audit trail of readings: visible to whoever may read conversations; nobody edits it."""

    list_display = ["read_at", "reader_name", "owner_name", "conversation_ref"]
    list_filter = ["read_at"]
    search_fields = ["reader_name", "owner_name", "=conversation_ref"]
    fields = readonly_fields = ("read_at", "reader_name", "owner_name", "conversation_ref", "conversation")


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "daily_token_quota"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    search_fields = ["user__username", "user__email"]
