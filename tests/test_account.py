"""The settings page, the theme on every page, Django's messages everywhere, and deleting an account."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from accounts.models import ImportJob, Profile, ShareLink
from api.models import ApiKey
from conversations.models import Attachment, Conversation, DailyUsage, Message, UsageRecord
from tests.factories import make_conversation, make_turns, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings, tmp_path):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_ROOT = tmp_path / "media"


def test_the_chat_page_links_to_the_settings_page(client, alice):
    client.force_login(alice)
    page = client.get(reverse("conversation_new")).content.decode()
    assert 'href="/account/"' in page
    response = client.get("/account/")
    assert response.status_code == 200
    html = response.content.decode()
    for part in ("Profile", "Theme", "API keys", "Shared links", "Export", "Import", "Delete account"):
        assert f">{part}</h2>" in html, part
    assert 'href="/accounts/email/"' in html and 'href="/accounts/password/change/"' in html
    assert 'href="/account/export/"' in html and 'action="/account/import/"' in html
    assert 'action="/account/api-keys/"' in html


def test_allauths_email_and_password_pages_use_the_sites_layout(client, alice):
    client.force_login(alice)
    for url in ("/accounts/email/", "/accounts/password/change/"):
        html = client.get(url).content.decode()
        assert 'class="account-card"' in html and "css/site.css" in html, url


def test_the_display_name_shows_at_the_foot_of_the_sidebar(client, alice):
    client.force_login(alice)
    response = client.post(reverse("account_profile"), {"display_name": "  Alice Liddell  "})
    assert response.status_code == 302
    assert Profile.objects.get(user=alice).display_name == "Alice Liddell"
    assert ">Alice Liddell<" in client.get(reverse("conversation_new")).content.decode()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_theme_is_stored_per_user_and_applied_on_every_page(client, alice, bob, theme):
    client.force_login(alice)
    assert client.post(reverse("account_theme"), {"theme": theme}).status_code == 302
    conv = make_conversation(alice)
    for url in (reverse("account_settings"), conv.get_absolute_url(), reverse("conversation_new"), "/accounts/email/"):
        assert f'<html lang="en" class="no-js" data-theme="{theme}">' in client.get(url).content.decode(), url
    client.force_login(bob)
    assert '<html lang="en" class="no-js">' in client.get(reverse("conversation_new")).content.decode()
    client.force_login(alice)
    client.post(reverse("account_theme"), {"theme": "system"})
    assert '<html lang="en" class="no-js">' in client.get(reverse("conversation_new")).content.decode()


def test_an_unknown_theme_is_refused(client, alice):
    client.force_login(alice)
    response = client.post(reverse("account_theme"), {"theme": "neon"})
    assert response.status_code == 400 and "Choose system, light or dark." in response.content.decode()
    assert not Profile.objects.filter(user=alice, theme="neon").exists()


def test_djangos_messages_show_on_the_chat_page(client, alice):
    client.force_login(alice)
    client.post(reverse("account_theme"), {"theme": "dark"})
    html = client.get(reverse("conversation_new")).content.decode()
    assert 'class="toasts"' in html and "Theme saved." in html
    assert "Theme saved." not in client.get(reverse("conversation_new")).content.decode()  # shown once


# -- deleting the account -------------------------------------------------------------------------------------
def everything() -> dict[str, set]:
    """Every row of every table, by model."""
    return {m._meta.label: set(m._default_manager.values_list("pk", flat=True)) for m in apps.get_models()}


def populate(user, client) -> None:
    """A user with something in every kind of thing the site stores for them, made through the site."""
    conv = make_conversation(user, title=f"{user.username}'s thread")
    turns = make_turns(conv, 4)
    for reply, tokens in ((turns[1], 100), (turns[3], 50)):  # one day, one model: folded into one row
        UsageRecord.objects.create(
            user=user, conversation=conv, persona=conv.persona, message=reply, model="openai:gpt-test",
            kind="reply", input_tokens=tokens, output_tokens=tokens // 2, cost=Decimal("0.01"),
        )  # fmt: skip
    client.post(reverse("conversation_share", args=[conv.pk]))
    client.post(reverse("account_theme"), {"theme": "dark"})
    assert client.post(reverse("api_keys"), {"name": "scripts"}).status_code == 201
    note = io.BytesIO(f"{user.username}'s notes\n".encode())
    note.name = "notes.txt"
    assert client.post(reverse("attachment_upload", args=[conv.pk]), {"file": note}).status_code == 201
    f = io.BytesIO(b'{"id": "x", "title": "t", "messages": []}')
    f.name = "big.json"
    client.post(reverse("account_import"), {"file": f})  # queued: its file waits in storage


def test_delete_account_removes_every_row_and_file_of_that_user_and_nothing_else(
    settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.ACCOUNT_IMPORT_INLINE_KB = 0
    alice, bob = make_user("alice"), make_user("bob")
    alices, bobs, alices_phone = Client(), Client(), Client()
    alices.login(username="alice", password="pw-alicealicealice")
    alices_phone.login(username="alice", password="pw-alicealicealice")
    bobs.login(username="bob", password="pw-bobbobbob")
    populate(alice, alices)
    populate(bob, bobs)
    alice_files = [ImportJob.objects.get(owner=alice).path, Attachment.objects.get(owner=alice).file.name]
    bob_files = [ImportJob.objects.get(owner=bob).path, Attachment.objects.get(owner=bob).file.name]
    assert all(default_storage.exists(name) for name in alice_files + bob_files)
    expected = {
        get_user_model()._meta.label: {alice.pk},
        Conversation._meta.label: set(Conversation.objects.filter(owner=alice).values_list("pk", flat=True)),
        Message._meta.label: set(Message.objects.filter(conversation__owner=alice).values_list("pk", flat=True)),
        ShareLink._meta.label: set(ShareLink.objects.filter(owner=alice).values_list("pk", flat=True)),
        Profile._meta.label: set(Profile.objects.filter(user=alice).values_list("pk", flat=True)),
        ImportJob._meta.label: set(ImportJob.objects.filter(owner=alice).values_list("pk", flat=True)),
        Session._meta.label: {alices.session.session_key, alices_phone.session.session_key},
        UsageRecord._meta.label: set(UsageRecord.objects.filter(user=alice).values_list("pk", flat=True)),
        DailyUsage._meta.label: set(DailyUsage.objects.filter(user=alice).values_list("pk", flat=True)),
        ApiKey._meta.label: set(ApiKey.objects.filter(user=alice).values_list("pk", flat=True)),
        Attachment._meta.label: set(Attachment.objects.filter(owner=alice).values_list("pk", flat=True)),
    }
    assert all(expected.values()), expected  # alice has a row in each
    before = everything()

    page = alices.get(reverse("account_delete"))
    assert page.status_code == 200 and "Your password" in page.content.decode()
    wrong = alices.post(reverse("account_delete"), {"password": "nope", "confirm": "delete"})
    assert wrong.status_code == 400 and "Nothing was deleted" in wrong.content.decode()
    unticked = alices.post(reverse("account_delete"), {"password": "pw-alicealicealice"})
    assert unticked.status_code == 400
    assert everything() == before

    with django_capture_on_commit_callbacks(execute=True):  # files go once the deletion is committed
        response = alices.post(reverse("account_delete"), {"password": "pw-alicealicealice", "confirm": "delete"})
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    after = everything()
    for label, rows in before.items():
        gone = rows - after[label]
        assert gone == expected.get(label, set()), label  # every table: alice's rows gone, nobody else's
        added = after[label] - rows
        if label == UsageRecord._meta.label:  # her usage, folded into anonymous daily totals
            folded = UsageRecord.objects.get(pk__in=added)
            assert folded.user.username == "(deleted accounts)" and not folded.user.is_active
            assert (folded.input_tokens, folded.output_tokens, folded.cost) == (150, 75, Decimal("0.02"))
            assert folded.conversation_id is None and folded.message_id is None and folded.calls == 2
        elif label == DailyUsage._meta.label:  # ...and so is her row of the daily rollup the page reads
            day = DailyUsage.objects.get(pk__in=added)
            assert day.user.username == "(deleted accounts)" and (day.calls, day.input_tokens) == (2, 150)
        elif label == get_user_model()._meta.label:  # ...which belong to this one account, not a person
            assert get_user_model().objects.get(pk__in=added).username == "(deleted accounts)"
        else:
            assert not added, label
    assert not UsageRecord.objects.filter(user__username="alice").exists()
    assert UsageRecord.objects.filter(user=bob).count() == 2
    assert not any(default_storage.exists(name) for name in alice_files)
    assert all(default_storage.exists(name) for name in bob_files)
    # Every session of hers is over: the other device is signed out too.
    assert alices_phone.get("/").status_code == 302
    assert alices_phone.get("/")["Location"].startswith("/accounts/login/")
    assert bobs.get(reverse("account_settings")).status_code == 200


def test_an_account_without_a_password_confirms_with_a_fresh_sign_in(client):
    carol = make_user("carol")
    carol.set_unusable_password()
    carol.save()
    client.force_login(carol)
    page = client.get(reverse("account_delete")).content.decode()
    assert "Sign in again" in page and "Your password" not in page
    response = client.post(reverse("account_delete"), {"confirm": "delete"})
    assert response.status_code == 400 and "Sign in again first" in response.content.decode()
    assert get_user_model().objects.filter(pk=carol.pk).exists()
    # After a fresh sign-in (allauth records it in the session), the same POST deletes.
    import time

    session = client.session
    session["account_authentication_methods_user"] = str(carol.pk)
    session["account_authentication_methods"] = [{"method": "socialaccount", "at": time.time() - 600}]
    session.save()
    assert client.post(reverse("account_delete"), {"confirm": "delete"}).status_code == 400  # ten minutes ago
    session["account_authentication_methods"] = [{"method": "socialaccount", "at": time.time()}]
    session.save()
    assert client.post(reverse("account_delete"), {"confirm": "delete"}).status_code == 302
    assert not get_user_model().objects.filter(pk=carol.pk).exists()
