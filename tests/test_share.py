"""Share links: a read-only snapshot of the active path at /s/<token>/, revocable, copyable by a reader."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts import paths
from accounts.models import ShareLink
from conversations.models import Conversation, Message
from tests.factories import add_message, make_conversation, make_turns

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def thread(alice):
    conv = make_conversation(alice, title="Release checklist")
    question = add_message(conv, role="user", content="What goes in a <b>release</b>?")
    add_message(
        conv,
        role="assistant",
        content="1. **Tag** it\n2. <script>alert(1)</script> nope\n\n[x](javascript:alert(2))",
    )
    # An earlier version of the question: another branch, never in a share.
    Message.objects.create(conversation=conv, role="user", content="an old draft", parent=question.parent)
    return conv


def share(client, conv) -> ShareLink:
    response = client.post(reverse("conversation_share", args=[conv.pk]))
    assert response.status_code == 302
    return ShareLink.objects.filter(conversation=conv).latest("created_at")


def test_anyone_with_the_link_reads_a_snapshot_without_composer_or_system_prompt(client, alice, thread):
    client.force_login(alice)
    link = share(client, thread)
    assert len(link.token) >= 22  # at least 128 bits in URL-safe base64
    page = Client().get(f"/s/{link.token}/")  # not signed in
    assert page.status_code == 200
    html = page.content.decode()
    assert "Release checklist" in html
    assert '<meta name="robots" content="noindex' in html and page["X-Robots-Tag"].startswith("noindex")
    assert '<meta property="og:title" content="Release checklist">' in html
    assert "What goes in a &lt;b&gt;release&lt;/b&gt;?" in html  # the user's text, escaped
    assert "<strong>Tag</strong>" in html  # the reply's markdown, rendered
    assert "<script>alert" not in html and 'href="javascript:' not in html  # and sanitized
    assert "an old draft" not in html  # not on the active path
    assert thread.persona.system_prompt not in html
    assert 'id="composer"' not in html and "<textarea" not in html
    assert "Continue in my account" not in html and "Sign in" in html


def test_the_snapshot_does_not_change_with_the_thread(client, alice, thread):
    client.force_login(alice)
    link = share(client, thread)
    Message.objects.create(conversation=thread, role="user", content="a later secret")
    thread.messages.filter(role="assistant").update(content="rewritten")
    html = Client().get(f"/s/{link.token}/").content.decode()
    assert "a later secret" not in html and "rewritten" not in html and "<strong>Tag</strong>" in html


def test_the_owner_lists_and_revokes_links_and_a_revoked_link_is_404(client, alice, thread):
    client.force_login(alice)
    first, second = share(client, thread), share(client, thread)
    settings_page = client.get(reverse("account_settings")).content.decode()
    assert f"/s/{first.token}/" in settings_page and f"/s/{second.token}/" in settings_page
    response = client.post(reverse("conversation_share_revoke", args=[thread.pk]), {"token": first.token})
    assert response.status_code == 302
    assert Client().get(f"/s/{first.token}/").status_code == 404
    assert Client().get(f"/s/{second.token}/").status_code == 200
    assert f"/s/{first.token}/" not in client.get(reverse("account_settings")).content.decode()
    client.post(reverse("conversation_share_revoke", args=[thread.pk]))  # without a token: all of the thread's
    assert Client().get(f"/s/{second.token}/").status_code == 404
    assert client.post(f"/s/{second.token}/continue/").status_code == 404


def test_deleting_the_thread_deletes_its_links(client, alice, thread):
    client.force_login(alice)
    link = share(client, thread)
    client.post(reverse("conversation_delete", args=[thread.pk]))
    assert Client().get(f"/s/{link.token}/").status_code == 404


def test_a_made_up_token_is_404(client):
    assert client.get("/s/not-a-real-token-at-all-xxxxxxxxxxxx/").status_code == 404


def test_another_users_share_endpoints_are_404(client, alice, bob, thread):
    client.force_login(alice)
    link = share(client, thread)
    client.force_login(bob)
    assert client.post(reverse("conversation_share", args=[thread.pk])).status_code == 404
    response = client.post(reverse("conversation_share_revoke", args=[thread.pk]), {"token": link.token})
    assert response.status_code == 404
    assert ShareLink.objects.filter(conversation=thread).count() == 1
    assert Client().get(f"/s/{link.token}/").status_code == 200  # still live


def test_a_signed_in_reader_continues_in_their_account(client, alice, bob, thread):
    client.force_login(alice)
    link = share(client, thread)
    client.force_login(bob)
    page = client.get(f"/s/{link.token}/").content.decode()
    assert "Continue in my account" in page
    response = client.post(f"/s/{link.token}/continue/")
    assert response.status_code == 302
    copy = Conversation.objects.get(owner=bob)
    assert response["Location"] == copy.get_absolute_url()
    assert copy.title == "Release checklist"
    texts = [(m.role, m.content) for m in paths.active_path(copy)]
    assert texts == [(m["role"], m["content"]) for m in link.messages] and len(texts) == 2
    assert client.get(copy.get_absolute_url()).status_code == 200
    assert Conversation.objects.filter(owner=alice).count() == 1  # alice's untouched


def test_an_anonymous_reader_is_asked_to_sign_in_to_continue(thread, alice, client):
    client.force_login(alice)
    link = share(client, thread)
    response = Client().post(f"/s/{link.token}/continue/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_sharing_from_the_thread_menu_shows_the_link_on_the_chat_page(client, alice, thread):
    make_turns(thread, 0)
    client.force_login(alice)
    page = client.get(thread.get_absolute_url()).content.decode()
    assert f'action="/conversations/{thread.pk}/share/"' in page
    assert f'href="/conversations/{thread.pk}/export.md"' in page
    assert f'href="/conversations/{thread.pk}/export.json"' in page
    response = client.post(reverse("conversation_share", args=[thread.pk]), {"next": thread.get_absolute_url()})
    assert response["Location"] == thread.get_absolute_url()
    page = client.get(thread.get_absolute_url()).content.decode()
    token = ShareLink.objects.get().token
    assert re.search(rf"Anyone with this link can read .*http://testserver/s/{token}/", page)
