"""Who may reach what: every URL, the websocket route and the admin pages, for four visitors.

anonymous, bob (another user), alice (the owner) and charlie (staff). The chat's routes come from
the URLconf itself, so a route added later is checked without anyone remembering to: any route
with a conversation in it is the owner's alone (404 for everyone else, exactly as for a thread
that does not exist), any other route needs a login unless listed in PUBLIC.
"""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts import urls as account_urls
from accounts.models import ImportJob, ShareLink
from conversations import urls as chat_urls
from conversations.models import Conversation, Message, Persona
from tests.conftest import open_socket
from tests.factories import add_message, make_conversation, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Users are made per test: the production hasher's million rounds would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


PUBLIC = {"healthz", "share_view"}  # a share link is for anyone who has it
VISITORS = ["anonymous", "bob", "charlie", "alice"]  # the owner last: her POSTs may delete the thread
LOGIN = "/accounts/login/"


def chat_routes() -> list[URLPattern]:
    """Every route of the chat app, as the URLconf has it now."""
    routes = [p for p in chat_urls.urlpatterns if isinstance(p, URLPattern)]
    assert all(p.name for p in routes), "every chat route needs a name (the table refers to it)"
    return routes


def account_routes() -> list[URLPattern]:
    """Every route of the accounts app (settings, export, import, share links)."""
    routes = [p for p in account_urls.urlpatterns if isinstance(p, URLPattern)]
    assert all(p.name for p in routes)
    return routes


def test_the_chat_app_is_mounted_whole_at_the_root():
    """Nothing reaches a chat view but through conversations.urls (so the table below sees it all)."""
    top = get_resolver().url_patterns
    views = {p.callback for p in top if isinstance(p, URLPattern)}
    assert not views & {p.callback for p in chat_routes()}
    mounted = [r for r in top if isinstance(r, URLResolver) and r.urlconf_module is chat_urls]
    assert len(mounted) == 1 and str(mounted[0].pattern) == ""


def test_conversation_urls_cannot_be_guessed_from_another(client, db):
    """A conversation's address is a random UUID: knowing one's own says nothing about anyone else's."""
    owner = make_user("dora")
    made = [make_conversation(owner) for _ in range(3)]
    ids = [c.pk for c in made]
    assert all(isinstance(pk, uuid.UUID) and pk.version == 4 for pk in ids)
    assert len({pk.int for pk in ids}) == 3 and all(abs(a.int - b.int) > 1 for a, b in zip(ids, ids[1:], strict=False))
    assert all(str(pk) in c.get_absolute_url() for pk, c in zip(ids, made, strict=True))
    client.force_login(owner)
    # Sequential ids do not route at all.
    assert client.get("/conversations/1/").status_code == 404


@pytest.fixture
def world(db):
    alice = make_user("alice")
    bob = make_user("bob")
    charlie = make_user("charlie", is_staff=True, is_superuser=True)
    conv = make_conversation(alice, title="Alice's secret plans")
    add_message(conv, role="user", content="my secret", client_id=uuid.uuid4())
    reply = add_message(conv, role="assistant", content="a secret answer")
    bobs = make_conversation(bob, title="Bob's thread")
    bobs_message = add_message(bobs, role="user", content="bob's words")
    link = ShareLink.objects.create(owner=alice, conversation=conv, title=conv.title, messages=[])
    job = ImportJob.objects.create(owner=alice, filename="secret.json", status="done")
    return {
        "token": link.token,
        "job_id": job.pk,
        "users": {"anonymous": None, "alice": alice, "bob": bob, "charlie": charlie},
        "conv": conv,
        "reply": reply,
        "bobs_message": bobs_message,
    }


def client_for(user) -> Client:
    client = Client(raise_request_exception=False)
    if user is not None:
        client.force_login(user)
    return client


def url_for(route: URLPattern, *, conversation_id, message_id, token="x" * 43, job_id=None) -> str:
    kwargs = {}
    for name, converter in route.pattern.converters.items():
        if name == "conversation_id":
            kwargs[name] = conversation_id
        elif name == "message_id":
            kwargs[name] = message_id
        elif name == "token":
            kwargs[name] = token
        elif name == "job_id":
            kwargs[name] = job_id or uuid.uuid4()
        else:
            raise AssertionError(f"{route.name}: no value for <{name}>; teach test_access about it")
        assert converter.regex  # a converter the URL can be reversed with
    return reverse(route.name, kwargs=kwargs)


def snapshot(conv_id):
    """What another visitor must never be able to change."""
    conv = Conversation.objects.filter(pk=conv_id).values("title", "pinned", "persona_id").first()
    fields = ("id", "content", "parent_id", "active_child_id")
    messages = list(Message.objects.filter(conversation_id=conv_id).values_list(*fields))
    return conv, messages


@pytest.mark.parametrize("route", chat_routes() + account_routes(), ids=lambda r: r.name)
def test_every_chat_route_is_the_owners_alone(world, route):
    conv, reply = world["conv"], world["reply"]
    url = url_for(route, conversation_id=conv.pk, message_id=reply.pk, token=world["token"], job_id=world["job_id"])
    nowhere = url_for(route, conversation_id=uuid.uuid4(), message_id=reply.pk)
    owned = bool({"conversation_id", "job_id"} & set(route.pattern.converters))
    before = snapshot(conv.pk)
    data = {"title": "hacked", "pinned": "1", "persona": "", "q": "secret"}
    for who in VISITORS:
        client = client_for(world["users"][who])
        if who == "alice":
            assert snapshot(conv.pk) == before, "someone else changed alice's thread"
        for method in ("get", "post"):
            response = getattr(client, method)(url, data if method == "post" else None)
            status = response.status_code
            where = f"{method.upper()} {url} as {who}: {status}"
            assert status < 500, where
            if route.name in PUBLIC:
                assert status in (200, 405), where
            elif who == "anonymous":
                assert status == 405 or (status == 302 and response["Location"].startswith(LOGIN)), where
            elif owned and who != "alice":
                # Exactly what a thread that does not exist answers: nobody learns it is there.
                ghost = getattr(client, method)(nowhere, data if method == "post" else None)
                assert status in (404, 405) and status == ghost.status_code, where
                assert b"secret" not in response.content, where
            else:
                assert status in (200, 204, 302, 400, 405), where
    if owned and "message_id" in route.pattern.converters:
        # Alice's thread with bob's message in it: not hers, so not there.
        stray = url_for(route, conversation_id=conv.pk, message_id=world["bobs_message"].pk)
        response = client_for(world["users"]["alice"]).get(stray)
        assert response.status_code in (404, 405)
        assert b"bob's words" not in response.content


def test_another_users_thread_is_404_on_the_page_and_unchanged_by_any_post(world):
    conv = world["conv"]
    for who in ("bob", "charlie"):  # staff too: staff read threads in the admin, not as users
        client = client_for(world["users"][who])
        response = client.get(conv.get_absolute_url())
        assert response.status_code == 404
        assert b"Alice's secret plans" not in response.content
    client = client_for(world["users"]["bob"])
    client.post(reverse("conversation_delete", args=[conv.pk]))
    client.post(reverse("conversation_rename", args=[conv.pk]), {"title": "mine now"})
    conv.refresh_from_db()
    assert conv.title == "Alice's secret plans"


def test_non_uuid_conversation_urls_are_404(world):
    client = client_for(world["users"]["alice"])
    for path in ("/conversations/1/", "/conversations/../admin/", "/conversations/' OR 1=1/"):
        assert client.get(path).status_code == 404


# -- the admin ---------------------------------------------------------------------------------------
def admin_urls(world) -> list[str]:
    """The admin's index, and every registered model's list, add and change pages."""
    urls = [reverse("admin:index")]
    examples = {
        Conversation: world["conv"].pk,
        Persona: Persona.objects.first().pk,
        type(world["users"]["alice"]): world["users"]["alice"].pk,
    }
    for model in admin.site._registry:
        info = model._meta.app_label, model._meta.model_name
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        if model in examples:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[examples[model]]))
    urls.append(reverse("admin:conversations_persona_preview", args=[examples[Persona]]))
    return urls


def test_the_admin_is_staff_only(world):
    urls = admin_urls(world)
    assert f"/admin/conversations/conversation/{world['conv'].pk}/change/" in urls
    assert "/admin/conversations/persona/" in urls
    for who in VISITORS:
        client = client_for(world["users"][who])
        for url in urls:
            response = client.get(url)
            if who == "charlie":
                assert response.status_code == 200, (url, response.status_code)
            else:
                assert response.status_code == 302, (url, who, response.status_code)
                assert response["Location"].startswith("/admin/login/"), (url, who)


def test_staff_read_threads_in_the_admin_but_cannot_change_or_delete_them(world):
    conv = world["conv"]
    client = client_for(world["users"]["charlie"])
    page = client.get(reverse("admin:conversations_conversation_change", args=[conv.pk]))
    assert b"my secret" in page.content  # moderation: staff can read
    assert (
        client.post(reverse("admin:conversations_conversation_change", args=[conv.pk]), {"title": "x"}).status_code
        == 403
    )
    assert (
        client.post(reverse("admin:conversations_conversation_delete", args=[conv.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert Conversation.objects.filter(pk=conv.pk, title="Alice's secret plans").exists()


# -- the websocket -------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("who", "target", "accepted"),
    [
        ("anonymous", "alices", False),
        ("bob", "alices", False),
        ("charlie", "alices", False),  # staff moderate in the admin, never on a user's socket
        ("alice", "alices", True),
        ("alice", "missing", False),
        ("alice", "bobs", False),
    ],
)
async def test_the_websocket_admits_only_the_owner(who, target, accepted):
    users = {
        "alice": await sync_to_async(make_user)("alice"),
        "bob": await sync_to_async(make_user)("bob"),
        "charlie": await sync_to_async(make_user)("charlie", is_staff=True, is_superuser=True),
        "anonymous": None,
    }
    conversations = {
        "alices": (await sync_to_async(make_conversation)(users["alice"])).pk,
        "bobs": (await sync_to_async(make_conversation)(users["bob"])).pk,
        "missing": uuid.uuid4(),
    }
    ok, ws = await open_socket(users[who], conversations[target])
    assert ok is accepted
    if accepted:
        assert (await ws.recv())["type"] == "state"
    else:
        # Refused at the handshake, with no event: nothing learned, nothing sent.
        assert await ws.c.receive_nothing(timeout=0.2)
    await ws.close()


# -- the API and its keys -------------------------------------------------------------------------------
def test_the_api_answers_only_to_a_key_never_to_a_session(world):
    from api import keys
    from api import urls as api_urls

    routes = {p.name for p in api_urls.urlpatterns}
    assert routes == {"api_keys", "api_key_revoke", "api_models", "api_model", "api_chat_completions", "api_unknown"}
    _, key = keys.api_key_create(user=world["users"]["alice"], name="k")
    body = '{"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}'
    for who in VISITORS:
        client = client_for(world["users"][who])
        for url in (reverse("api_models"), reverse("api_model", args=["assistant"])):
            response = client.get(url)
            assert response.status_code == 401, (who, url)
            assert response.json()["error"]["code"] == "invalid_api_key"
        response = client.post(reverse("api_chat_completions"), body, content_type="application/json")
        assert response.status_code == 401, who
    # Any other /v1/ path is OpenAI's 404 object, for everyone.
    missing = Client().post("/v1/embeddings", body, content_type="application/json")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    # A key with a session's CSRF-less POST would be the same: the API never looks at cookies.
    assert Client().get(reverse("api_models"), HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200


@pytest.mark.parametrize("route", chat_routes(), ids=lambda r: r.name)
def test_a_key_opens_no_web_page(world, route):
    from api import keys

    _, key = keys.api_key_create(user=world["users"]["alice"], name="k")
    url = url_for(route, conversation_id=world["conv"].pk, message_id=world["reply"].pk)
    for method in ("get", "post"):
        response = getattr(Client(), method)(url, HTTP_AUTHORIZATION=f"Bearer {key}")
        if route.name in PUBLIC:
            continue
        assert response.status_code == 405 or (
            response.status_code == 302 and response["Location"].startswith(LOGIN)
        ), (method, url, response.status_code)


def test_api_keys_page_is_each_users_own(world):
    from api import keys
    from api.models import ApiKey

    alices, _ = keys.api_key_create(user=world["users"]["alice"], name="alice's laptop")
    page = reverse("api_keys")
    revoke = reverse("api_key_revoke", args=[alices.pk])
    anonymous = client_for(None)
    for response in (anonymous.get(page), anonymous.post(page, {"name": "x"}), anonymous.post(revoke)):
        assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    for who in ("bob", "charlie"):  # staff revoke in the admin, not through alice's page
        client = client_for(world["users"][who])
        assert b"alice's laptop" not in client.get(page).content
        assert client.post(revoke).status_code == 404
    assert ApiKey.objects.get(pk=alices.pk).revoked_at is None
    assert client_for(world["users"]["alice"]).post(revoke).status_code == 302
    assert ApiKey.objects.get(pk=alices.pk).revoked_at is not None
