"""The default persona, so a fresh site can chat at once."""

from __future__ import annotations

from django.db import migrations


def create_default(apps, schema_editor):
    Persona = apps.get_model("conversations", "Persona")
    if not Persona.objects.filter(is_default=True).exists():
        Persona.objects.create(
            name="Assistant",
            slug="assistant",
            description="A helpful general assistant.",
            system_prompt="You are a helpful, concise assistant. Use markdown where it helps.",
            is_active=True,
            is_default=True,
        )


def remove_default(apps, schema_editor):
    apps.get_model("conversations", "Persona").objects.filter(slug="assistant", is_default=True).delete()


class Migration(migrations.Migration):
    dependencies = [("conversations", "0001_initial")]
    operations = [migrations.RunPython(create_default, remove_default)]
