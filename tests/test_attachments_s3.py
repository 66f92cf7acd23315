"""Attachments on an S3-compatible store: moto's server, started here on a loopback port, via django-storages."""

from __future__ import annotations

import boto3
import pytest
from django.test import Client

from conversations.models import Attachment
from tests.factories import make_conversation
from tests.files import EXE, png
from tests.live import free_port

BUCKET = "chat-attachments"
CREDENTIALS = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API (moto's server mode) on a free loopback port, for this module."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, settings):
    """The site's default storage pointed at a fresh bucket on the server, as AWS_* settings would."""
    settings.CHAT_DEFAULT_MODEL = "openai:gpt-test"
    client = boto3.client("s3", endpoint_url=s3_server, **CREDENTIALS)
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_server,
                "access_key": CREDENTIALS["aws_access_key_id"],
                "secret_key": CREDENTIALS["aws_secret_access_key"],
                "region_name": "us-east-1",
                "default_acl": None,
                "file_overwrite": False,
            },
        },
    }
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client) -> list[str]:
    return [obj["Key"] for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, conversation, name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(f"/conversations/{conversation.pk}/attachments/", {"file": SimpleUploadedFile(name, data)})


@pytest.mark.django_db(transaction=True)
def test_it_stores_serves_and_deletes_files_on_s3(s3, alice, bob):
    conv = make_conversation(alice)
    data = png(64, 64, "purple")
    response = post(logged_in(alice), conv, "photo.png", data)
    assert response.status_code == 201, response.content
    attachment = Attachment.objects.get(pk=response.json()["id"])
    assert type(attachment.file.storage._wrapped).__name__ == "S3Storage"
    assert keys(s3) == [attachment.file.name]
    assert s3.get_object(Bucket=BUCKET, Key=attachment.file.name)["Body"].read() == data

    served = logged_in(alice).get(f"/attachments/{attachment.pk}/")
    assert served.status_code == 200
    assert b"".join(served.streaming_content) == data
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert logged_in(bob).get(f"/attachments/{attachment.pk}/").status_code == 404

    # A refused file never reaches the bucket.
    assert post(logged_in(alice), conv, "cat.png", EXE).status_code == 400
    assert keys(s3) == [attachment.file.name]

    # Deleting the conversation deletes the object.
    assert logged_in(alice).post(f"/conversations/{conv.pk}/delete/").status_code in (200, 204, 302)
    assert keys(s3) == []
