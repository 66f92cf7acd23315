"""Fill the daily usage rollup from the usage records stored before it existed (UTC days, as the page counts).

Rows folded from deleted accounts before `UsageRecord.calls` existed count as one call each: how many
calls they stood for was not kept.
"""

import datetime as dt

from django.db import migrations
from django.db.models import Sum
from django.db.models.functions import Coalesce, TruncDate

SUMMED = ("calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "cost")


def fill(apps, schema_editor):
    UsageRecord = apps.get_model("conversations", "UsageRecord")
    DailyUsage = apps.get_model("conversations", "DailyUsage")
    groups = (
        UsageRecord.objects.annotate(the_day=TruncDate("created_at", tzinfo=dt.UTC), ref=Coalesce("persona_id", 0))
        .values("the_day", "user_id", "model", "ref", "kind")
        .annotate(**{f"sum_{f}": Sum(f) for f in SUMMED})
        .order_by()
    )
    batch = []
    for g in groups.iterator(chunk_size=5000):
        batch.append(
            DailyUsage(
                day=g["the_day"],
                user_id=g["user_id"],
                model=g["model"],
                persona_ref=g["ref"],
                kind=g["kind"],
                **{f: g[f"sum_{f}"] or 0 for f in SUMMED},
            )
        )
        if len(batch) >= 5000:
            DailyUsage.objects.bulk_create(batch)
            batch = []
    DailyUsage.objects.bulk_create(batch)


def empty(apps, schema_editor):
    apps.get_model("conversations", "DailyUsage").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("conversations", "0010_daily_usage")]

    operations = [migrations.RunPython(fill, empty)]
