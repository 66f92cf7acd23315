"""Admin: personas are curated here; conversations are read-only for moderation."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from .llm import ProviderError, configured_providers, split_model
from .models import Conversation, Message, Persona, UserQuota


class PersonaForm(forms.ModelForm):
    class Meta:
        model = Persona
        fields = [
            "name",
            "slug",
            "description",
            "system_prompt",
            "model",
            "temperature",
            "max_output_tokens",
            "context_budget_tokens",
            "is_active",
            "is_default",
            "groups",
            "position",
        ]

    def clean_model(self) -> str:
        spec = self.cleaned_data["model"].strip()
        if not spec:
            return spec
        try:
            provider, _ = split_model(spec)
        except ProviderError as exc:
            raise forms.ValidationError(exc.message) from exc
        if provider not in configured_providers():
            raise forms.ValidationError(
                f"The {provider} provider is not configured on this site: set its API key (see README)."
            )
        return spec

    def clean_temperature(self) -> float | None:
        value = self.cleaned_data.get("temperature")
        if value is not None and not 0 <= value <= 2:
            raise forms.ValidationError("Temperature is between 0 and 2.")
        return value


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    form = PersonaForm
    list_display = ["name", "slug", "model", "is_active", "is_default", "position"]
    list_editable = ["position", "is_active"]
    list_filter = ["is_active"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["groups"]
    search_fields = ["name", "slug", "description"]

    def save_model(self, request: HttpRequest, obj: Persona, form: Any, change: bool) -> None:
        # Exactly one default: choosing a new one clears the old in the same transaction.
        with transaction.atomic():
            if obj.is_default:
                Persona.objects.filter(is_default=True).exclude(pk=obj.pk).update(is_default=False)
            super().save_model(request, obj, form, change)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["id", "role", "status", "content", "model", "input_tokens", "output_tokens", "hidden", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "owner", "persona", "updated_at"]
    list_select_related = ["owner", "persona"]
    search_fields = ["title", "owner__username", "owner__email"]
    list_filter = ["persona"]
    readonly_fields = ["id", "owner", "persona", "title", "created_at", "updated_at", "summary", "summary_through"]
    exclude = ["summarizing_since", "title_is_auto", "summary_updated_at", "pinned"]
    inlines = [MessageInline]


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ["user", "daily_token_quota"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    search_fields = ["user__username", "user__email"]
