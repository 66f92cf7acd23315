"""The tree replaces `hidden` and the one-summary-per-conversation fields."""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("conversations", "0006_tree_from_hidden")]

    operations = [
        migrations.RemoveIndex(model_name="message", name="conversatio_convers_c34d4b_idx"),
        migrations.RemoveField(model_name="message", name="hidden"),
        migrations.RemoveField(model_name="conversation", name="summary"),
        migrations.RemoveField(model_name="conversation", name="summary_through"),
        migrations.RemoveField(model_name="conversation", name="summary_updated_at"),
    ]
