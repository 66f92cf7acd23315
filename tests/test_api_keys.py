"""API keys: made on their page (shown once), stored hashed, revocable by their owner and by staff."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.test import Client
from django.urls import reverse

from api import keys
from api.models import ApiKey

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def signed_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def test_it_makes_a_key_and_shows_it_once(alice):
    client = signed_in(alice)
    response = client.post(reverse("api_keys"), {"name": "laptop"})
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    found = re.findall(r"csk-[A-Za-z0-9_-]{32,}", response.content.decode())
    assert len(found) == 1
    key = found[0]
    row = ApiKey.objects.get(user=alice)
    assert row.name == "laptop" and key.startswith(row.prefix)
    assert row.hashed == hashlib.sha256(key.encode()).hexdigest() and key not in row.hashed
    # Never again: the list shows the prefix only.
    page = client.get(reverse("api_keys")).content.decode()
    assert key not in page and row.prefix in page and "laptop" in page
    assert keys.api_key_authenticate(key) == row


def test_making_a_key_needs_the_csrf_token(alice):
    client = signed_in(alice, enforce_csrf_checks=True)
    assert client.post(reverse("api_keys"), {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_a_revoked_or_wrong_key_authenticates_no_one(alice):
    row, key = keys.api_key_create(user=alice, name="k")
    assert keys.api_key_authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert keys.key_from_header(f"Bearer {key}") == key
    assert keys.key_from_header(f"Basic {key}") is None
    keys.api_key_revoke(key=row)
    assert keys.api_key_authenticate(key) is None
    alice.is_active = False
    alice.save()
    _, other = keys.api_key_create(user=alice, name="k2")
    assert keys.api_key_authenticate(other) is None  # a deactivated user's keys stop working


def test_staff_see_and_revoke_any_key_in_the_admin(alice, charlie):
    row, key = keys.api_key_create(user=alice, name="alice script")
    client = signed_in(charlie)
    listing = client.get(reverse("admin:api_apikey_changelist")).content.decode()
    assert "alice script" in listing and row.prefix in listing and row.hashed not in listing
    response = client.post(
        reverse("admin:api_apikey_changelist"), {"action": "revoke", "_selected_action": [row.pk]}, follow=True
    )
    assert response.status_code == 200
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert keys.api_key_authenticate(key) is None
