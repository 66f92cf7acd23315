"""Admin: the model registry (filled from the providers' model lists, priced by staff) and usage records."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path, reverse

from conversations.llm import ProviderError, configured_providers, list_models, split_model
from conversations.models import ChatModel, UsageRecord


class ChatModelForm(forms.ModelForm):
    class Meta:
        model = ChatModel
        fields = [
            "name",
            "label",
            "is_active",
            "context_window",
            "max_output_tokens",
            "supports_images",
            "supports_pdf",
            "input_price",
            "cached_input_price",
            "cache_write_price",
            "output_price",
            "groups",
        ]

    def clean_name(self) -> str:
        spec = self.cleaned_data["name"].strip()
        try:
            split_model(spec)
        except ProviderError as exc:
            raise forms.ValidationError(f"{exc.message} Providers: openai, anthropic, offline.") from exc
        return spec


def sync_registry() -> tuple[list[str], list[str]]:
    """Add every model the configured providers list that the registry lacks; (added, failures).

    What staff set is never touched: existing entries keep their label, prices, groups and state.
    New entries start inactive, priced at zero, until staff set their prices and switch them on.
    """
    added: list[str] = []
    failures: list[str] = []
    known = set(ChatModel.objects.values_list("name", flat=True))
    for provider in sorted(configured_providers() - {"offline"}):
        try:
            listed = async_to_sync(list_models)(provider)
        except ProviderError as exc:
            failures.append(f"{provider}: {exc.message}")
            continue
        for spec, label in listed:
            if spec in known:
                continue
            ChatModel.objects.create(name=spec, label=label if label != spec.partition(":")[2] else "", is_active=False)
            known.add(spec)
            added.append(spec)
    return added, failures


@admin.register(ChatModel)
class ChatModelAdmin(admin.ModelAdmin):
    form = ChatModelForm
    change_list_template = "admin/usage/chatmodel/change_list.html"
    list_display = [
        "name",
        "label",
        "is_active",
        "input_price",
        "cached_input_price",
        "output_price",
        "context_window",
        "supports_images",
        "supports_pdf",
        "who",
    ]
    list_editable = ["is_active"]
    list_filter = ["is_active", "supports_images", "supports_pdf"]
    search_fields = ["name", "label"]
    filter_horizontal = ["groups"]
    actions = ["activate", "deactivate"]
    fieldsets = [
        (None, {"fields": ["name", "label", "is_active"]}),
        ("Limits", {"fields": ["context_window", "max_output_tokens", "supports_images", "supports_pdf"]}),
        (
            "Prices (USD per million tokens)",
            {"fields": ["input_price", "cached_input_price", "cache_write_price", "output_price"]},
        ),
        ("Who may use it", {"fields": ["groups"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ChatModel]:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="Who")
    def who(self, entry: ChatModel) -> str:
        names = [g.name for g in entry.groups.all()]
        return ", ".join(names) if names else "everyone"

    @admin.action(description="Activate the selected models")
    def activate(self, request: HttpRequest, queryset: QuerySet[ChatModel]) -> None:
        self.message_user(request, f"{queryset.update(is_active=True)} model(s) activated.")

    @admin.action(description="Deactivate the selected models")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[ChatModel]) -> None:
        self.message_user(request, f"{queryset.update(is_active=False)} model(s) deactivated.")

    def get_urls(self) -> list[URLPattern]:
        sync = path("sync/", self.admin_site.admin_view(self.sync_view), name="conversations_chatmodel_sync")
        return [sync, *super().get_urls()]

    def sync_view(self, request: HttpRequest) -> HttpResponseBase:
        """Fill the registry from each configured provider's model list (POST)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_add_permission(request):
            raise PermissionDenied
        return _sync(request)


def _sync(request: HttpRequest) -> HttpResponseBase:
    added, failures = sync_registry()
    if added:
        messages.success(
            request, f"Added {len(added)} model(s), inactive until you set their prices: {', '.join(added)}."
        )
    else:
        messages.info(request, "No new models: the registry already lists every model the providers offer.")
    for failure in failures:
        messages.error(request, f"Could not list models of {failure}")
    return HttpResponseRedirect(reverse("admin:conversations_chatmodel_changelist"))


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Every provider call, read-only: the charts are at /admin/usage/."""

    list_display = [
        "created_at",
        "user",
        "kind",
        "model",
        "persona",
        "calls",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost",
    ]
    list_filter = ["kind", "model"]
    list_select_related = ["user", "persona"]
    search_fields = ["user__username", "model"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in UsageRecord._meta.fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
