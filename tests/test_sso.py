"""Single sign-on through OpenID Connect, against a real (test) identity provider over loopback.

The site's allauth talks to tests/fakes/oidc.py by HTTP: discovery, authorization, token (an RS256
ID token), userinfo and JWKS. The browser's part (following redirects) is played by the test.
"""

from __future__ import annotations

import httpx
import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount, SocialApp
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from conversations import selectors
from tests.factories import make_persona
from tests.fakes.oidc import FakeOIDC

pytestmark = pytest.mark.django_db
User = get_user_model()
LOGIN = "/accounts/oidc/sso/login/"


@pytest.fixture(scope="module")
def _idp():
    with FakeOIDC(client_id="chat-site", client_secret="s3cret") as idp:
        yield idp


@pytest.fixture
def idp(_idp, settings):
    """The identity provider, configured as the environment would (OIDC_* settings)."""
    _idp.user = {
        "sub": "ann-1",
        "email": "ann@example.com",
        "email_verified": True,
        "preferred_username": "ann",
        "name": "Ann Example",
        "groups": ["engineering", "staff"],
    }
    settings.OIDC_GROUPS_CLAIM = "groups"
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": "sso",
                    "name": "Acme SSO",
                    "client_id": "chat-site",
                    "secret": "s3cret",
                    "settings": {"server_url": _idp.issuer},
                }
            ],
        }
    }
    return _idp


def sign_in(client: Client, login_url: str = LOGIN):
    """Press the button, let the identity provider approve, come back: the site's final answer."""
    start = client.post(login_url)
    assert start.status_code == 302, start.content[:500]
    assert start["Location"].startswith(f"{_issuer(client)}/authorize?")
    approved = httpx.get(start["Location"], follow_redirects=False)
    assert approved.status_code == 302
    back = approved.headers["location"]
    assert back.startswith("http://testserver/accounts/oidc/")
    return client.get(back.removeprefix("http://testserver"))


def _issuer(client: Client) -> str:
    from django.conf import settings

    apps = settings.SOCIALACCOUNT_PROVIDERS["openid_connect"].get("APPS")
    if apps:
        return apps[0]["settings"]["server_url"]
    return SocialApp.objects.get(provider="openid_connect").settings["server_url"]


def signed_in_user(client: Client):
    response = client.get("/")
    assert response.status_code == 200, "not signed in"
    return response.wsgi_request.user


def test_the_login_page_has_the_sign_in_button(idp, client):
    page = client.get("/accounts/login/")
    assert b"Sign in with Acme SSO" in page.content
    assert b'action="/accounts/oidc/sso/login/' in page.content


def test_it_creates_the_user_at_first_sign_in_with_the_claimed_groups(idp, client):
    response = sign_in(client)
    assert response.status_code == 302 and response["Location"] == "/"
    user = signed_in_user(client)
    assert user.email == "ann@example.com"
    assert sorted(user.groups.values_list("name", flat=True)) == ["engineering", "staff"]
    assert SocialAccount.objects.get(user=user).uid == "ann-1"
    # The code went back to the provider for tokens (allauth skips the ID token's signature check for a
    # token it fetched itself, as the spec allows, so JWKS is not asked for here).
    assert "POST /token" in idp.requests and "GET /userinfo" in idp.requests


def test_a_second_sign_in_with_changed_groups_updates_them(idp, client):
    legal = make_persona("legal")
    legal.groups.add(Group.objects.create(name="legal"))
    sign_in(client)
    user = User.objects.get(email="ann@example.com")
    assert "legal" not in [p.slug for p in selectors.personas_for_user(user)]
    client.logout()
    idp.user["groups"] = ["engineering", "legal"]
    sign_in(client)
    assert signed_in_user(client).pk == user.pk  # the same account, not a new one
    assert sorted(user.groups.values_list("name", flat=True)) == ["engineering", "legal"]
    assert "legal" in [p.slug for p in selectors.personas_for_user(user)]
    client.logout()
    idp.user.pop("groups")  # the claim gone: in no group
    sign_in(client)
    assert not user.groups.exists()
    assert User.objects.count() == 1


def test_local_sign_up_is_off_when_configured_but_sso_still_signs_people_up(idp, client, settings):
    assert b"/accounts/signup/" in client.get("/accounts/login/").content
    settings.ACCOUNT_ALLOW_SIGNUP = False
    assert b"/accounts/signup/" not in client.get("/accounts/login/").content  # not offered
    page = client.get("/accounts/signup/")
    assert b"Sign Up Closed" in page.content or b"closed" in page.content.lower()
    client.post(
        "/accounts/signup/",
        {
            "email": "mallory@example.com",
            "username": "mallory",
            "password1": "Xy9!long-pass",
            "password2": "Xy9!long-pass",
        },
    )
    assert not User.objects.filter(username="mallory").exists()
    sign_in(client)
    assert signed_in_user(client).email == "ann@example.com"


def test_local_sign_up_is_on_by_default(idp, client):
    client.post(
        "/accounts/signup/",
        {"email": "zed@example.com", "username": "zed", "password1": "Xy9!long-pass", "password2": "Xy9!long-pass"},
    )
    assert User.objects.filter(username="zed").exists()


def test_an_existing_account_is_linked_by_a_verified_email(idp, client):
    ann = User.objects.create_user(username="ann_local", email="ann@example.com", password="pw-local-ann")
    EmailAddress.objects.create(user=ann, email="ann@example.com", verified=True, primary=True)
    sign_in(client)
    assert signed_in_user(client).pk == ann.pk
    assert SocialAccount.objects.get(uid="ann-1").user == ann
    assert sorted(ann.groups.values_list("name", flat=True)) == ["engineering", "staff"]


def test_an_unverified_email_links_nothing(idp, client):
    ann = User.objects.create_user(username="ann_local", email="ann@example.com", password="pw-local-ann")
    EmailAddress.objects.create(user=ann, email="ann@example.com", verified=True, primary=True)
    idp.user["email_verified"] = False
    sign_in(client)
    assert not SocialAccount.objects.filter(user=ann).exists()
    assert not ann.groups.exists()
    response = client.get("/")
    assert response.wsgi_request.user.pk != ann.pk


def test_a_socialapp_made_in_the_admin_works_too(_idp, client, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"OAUTH_PKCE_ENABLED": True}}
    settings.OIDC_GROUPS_CLAIM = ""
    _idp.user = {"sub": "bo-7", "email": "bo@example.com", "email_verified": True}
    SocialApp.objects.create(
        provider="openid_connect",
        provider_id="corp",
        name="Corp Login",
        client_id="chat-site",
        secret="s3cret",
        settings={"server_url": _idp.issuer},
    )
    assert b"Sign in with Corp Login" in client.get("/accounts/login/").content
    sign_in(client, "/accounts/oidc/corp/login/")
    assert signed_in_user(client).email == "bo@example.com"
