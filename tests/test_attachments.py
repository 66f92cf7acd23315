"""Attachments: upload (sniffed by content), storage, serving to the owner only, and the orphan sweep."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from PIL import Image

from attachments import services
from conversations.models import Attachment, Message
from tests.factories import make_conversation, make_persona
from tests.files import EXE, jpeg_with_gps, pdf, png


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CHAT_DEFAULT_MODEL = "openai:gpt-test"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def upload(client: Client, conversation, name: str, data: bytes):
    return client.post(f"/conversations/{conversation.pk}/attachments/", {"file": _file(name, data)})


def _file(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def stored_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.django_db
def test_it_stores_an_image_and_serves_it_only_to_its_owner(alice, bob, settings):
    conv = make_conversation(alice)
    data = png()
    response = upload(client_for(alice), conv, "screenshot.png", data)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "screenshot.png"
    assert body["size"] == len(data)
    assert body["content_type"] == "image/png"
    assert set(body) == {"id", "name", "size", "content_type"}
    attachment = Attachment.objects.get(pk=body["id"])
    assert attachment.kind == "image" and (attachment.width, attachment.height) == (40, 30)
    assert attachment.message is None

    served = client_for(alice).get(f"/attachments/{body['id']}/")
    assert served.status_code == 200
    assert b"".join(served.streaming_content) == data
    assert served["Content-Type"] == "image/png"
    assert served["X-Content-Type-Options"] == "nosniff"
    assert served["Content-Disposition"].startswith("inline")
    assert "screenshot.png" in served["Content-Disposition"]

    assert client_for(bob).get(f"/attachments/{body['id']}/").status_code == 404
    assert Client().get(f"/attachments/{body['id']}/").status_code == 302  # to the login page
    # Nor can bob upload into alice's thread.
    assert upload(client_for(bob), conv, "x.png", png()).status_code == 404


@pytest.mark.django_db
def test_it_refuses_a_program_renamed_to_png_and_stores_nothing(alice, settings):
    conv = make_conversation(alice)
    response = upload(client_for(alice), conv, "cute-cat.png", EXE)
    assert response.status_code == 400
    assert "Windows program" in response.json()["error"]
    assert not Attachment.objects.exists()
    assert stored_files(settings) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "cannot be read"),  # a PNG header and nothing behind it
        (b"\xff\xd8\xff\xe0garbage", "cannot be read"),
        (b"%PDF-1.4 not really", "PDF cannot be used"),
        ("caf\u00e9".encode("latin-1") + b" \xff\xfe", "not an image, a PDF or UTF-8 text"),
        (b"text with a NUL \x00 byte", "not an image, a PDF or UTF-8 text"),
        (b"PK\x03\x04rest of a zip", "ZIP archive"),
    ],
)
def test_it_refuses_what_is_not_what_it_claims(alice, settings, data, reason):
    conv = make_conversation(alice)
    response = upload(client_for(alice), conv, "file.png", data)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not Attachment.objects.exists()
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_it_refuses_a_file_over_the_size_limit(alice, settings):
    settings.CHAT_MAX_UPLOAD_MB = 1
    conv = make_conversation(alice)
    response = upload(client_for(alice), conv, "big.txt", b"a line of text\n" * 80_000)  # 1.2 MB
    assert response.status_code == 400
    assert "limit is 1 MB" in response.json()["error"]
    assert not Attachment.objects.exists()


@pytest.mark.django_db
def test_it_refuses_uploads_past_the_users_storage_allowance(alice, bob, settings):
    settings.CHAT_USER_STORAGE_MB = 1
    conv = make_conversation(alice)
    chunk = b"x" * 600_000 + b"\n"
    assert upload(client_for(alice), conv, "a.txt", chunk).status_code == 201
    response = upload(client_for(alice), conv, "b.txt", chunk)
    assert response.status_code == 400
    assert "storage allowance" in response.json()["error"]
    assert Attachment.objects.count() == 1
    # Another user has an allowance of their own.
    assert upload(client_for(bob), make_conversation(bob), "c.txt", chunk).status_code == 201


@pytest.mark.django_db
def test_it_removes_gps_from_a_photo_and_keeps_the_rest(alice):
    conv = make_conversation(alice)
    response = upload(client_for(alice), conv, "holiday.jpg", jpeg_with_gps())
    assert response.status_code == 201
    attachment = Attachment.objects.get(pk=response.json()["id"])
    with attachment.file.open("rb") as handle:
        stored = handle.read()
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG" and image.size == (64, 48)
    exif = image.getexif()
    assert exif.get(0x010F) == "TestCam"
    assert 0x8825 not in exif and not exif.get_ifd(0x8825)
    assert response.json()["size"] == len(stored) == attachment.size


@pytest.mark.django_db
def test_it_extracts_a_pdfs_text(alice):
    conv = make_conversation(alice)
    response = upload(client_for(alice), conv, "report.pdf", pdf("Quarterly numbers are up."))
    assert response.status_code == 201
    assert response.json()["content_type"] == "application/pdf"
    attachment = Attachment.objects.get(pk=response.json()["id"])
    assert attachment.kind == "pdf" and attachment.pages == 1
    assert "Quarterly numbers are up." in attachment.text
    served = client_for(alice).get(f"/attachments/{attachment.pk}/")
    assert served["Content-Type"] == "application/pdf"
    assert served["Content-Disposition"].startswith("attachment")


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["page.html", "drawing.svg"])
def test_it_never_serves_html_or_svg_inline(alice, name):
    conv = make_conversation(alice)
    markup = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    response = upload(client_for(alice), conv, name, markup)
    assert response.status_code == 201
    assert response.json()["content_type"] == "text/plain"
    served = client_for(alice).get(f"/attachments/{response.json()['id']}/")
    assert served["Content-Type"] == "text/plain; charset=utf-8"
    assert served["Content-Disposition"].startswith("attachment")
    assert served["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in served["Content-Security-Policy"]


@pytest.mark.django_db
def test_it_keeps_text_kinds_by_extension(alice):
    conv = make_conversation(alice)
    for name, kind in [("data.csv", "text/csv"), ("notes.md", "text/markdown"), ("x.json", "application/json")]:
        response = upload(client_for(alice), conv, name, b'{"a": 1}\n')
        assert response.json()["content_type"] == kind


@pytest.mark.django_db
def test_it_refuses_an_image_for_a_model_that_cannot_see(alice):
    conv = make_conversation(alice, persona=make_persona("demo", model="offline:demo"))
    response = upload(client_for(alice), conv, "a.png", png())
    assert response.status_code == 400
    assert "does not take images" in response.json()["error"]
    # A text file is fine.
    assert upload(client_for(alice), conv, "a.txt", b"hello\n").status_code == 201


@pytest.mark.django_db
def test_upload_needs_csrf(alice):
    conv = make_conversation(alice)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = upload(client, conv, "a.png", png())
    assert response.status_code == 403
    assert not Attachment.objects.exists()


@pytest.mark.django_db
def test_upload_wants_exactly_one_file(alice):
    conv = make_conversation(alice)
    response = client_for(alice).post(f"/conversations/{conv.pk}/attachments/", {"other": "x"})
    assert response.status_code == 400
    assert "`file`" in response.json()["error"]


@pytest.mark.django_db(transaction=True)
def test_the_composer_can_remove_an_unsent_file(alice, bob, settings):
    conv = make_conversation(alice)
    attachment_id = upload(client_for(alice), conv, "a.txt", b"hi\n").json()["id"]
    assert client_for(bob).post(f"/attachments/{attachment_id}/remove/").status_code == 404
    assert client_for(alice).post(f"/attachments/{attachment_id}/remove/").status_code == 204
    assert not Attachment.objects.exists()
    assert stored_files(settings) == []


@pytest.mark.django_db(transaction=True)
def test_the_sweep_deletes_uploads_never_sent_after_a_day(alice, settings):
    conv = make_conversation(alice)
    old = Attachment.objects.get(pk=upload(client_for(alice), conv, "old.txt", b"old\n").json()["id"])
    sent = Attachment.objects.get(pk=upload(client_for(alice), conv, "sent.txt", b"sent\n").json()["id"])
    fresh = Attachment.objects.get(pk=upload(client_for(alice), conv, "new.txt", b"new\n").json()["id"])
    message = Message.objects.create(conversation=conv, role="user", content="see file")
    Attachment.objects.filter(pk=sent.pk).update(message=message)
    a_day_ago = timezone.now() - dt.timedelta(hours=25)
    Attachment.objects.filter(pk__in=[old.pk, sent.pk]).update(created_at=a_day_ago)
    from attachments.tasks import sweep_orphans

    assert sweep_orphans.call() == 1
    assert set(Attachment.objects.values_list("pk", flat=True)) == {sent.pk, fresh.pk}
    assert not default_storage.exists(old.file.name)
    assert default_storage.exists(sent.file.name) and default_storage.exists(fresh.file.name)


@pytest.mark.django_db(transaction=True)
def test_an_upload_queues_the_sweep_once(alice):
    from django_tasks_db.models import DBTaskResult

    conv = make_conversation(alice)
    for name in ("a.txt", "b.txt"):
        upload(client_for(alice), conv, name, b"x\n")
    queued = DBTaskResult.objects.filter(task_path="attachments.tasks.sweep_orphans")
    assert queued.count() == 1
    assert queued.get().run_after > timezone.now() + dt.timedelta(hours=23)


@pytest.mark.django_db(transaction=True)
def test_deleting_a_conversation_or_an_account_deletes_the_files(alice, bob, settings):
    conv = make_conversation(alice)
    first = Attachment.objects.get(pk=upload(client_for(alice), conv, "a.png", png()).json()["id"])
    response = client_for(alice).post(f"/conversations/{conv.pk}/delete/")
    assert response.status_code in (200, 204, 302)
    assert not Attachment.objects.exists()
    assert not default_storage.exists(first.file.name)

    bob_conv = make_conversation(bob)
    second = Attachment.objects.get(pk=upload(client_for(bob), bob_conv, "b.png", png()).json()["id"])
    assert default_storage.exists(second.file.name)
    bob.delete()
    assert not default_storage.exists(second.file.name)
    assert stored_files(settings) == []


def test_the_size_check_refuses_before_reading(settings):
    settings.CHAT_MAX_UPLOAD_MB = 20
    services.check_size(20 * 1024 * 1024)
    with pytest.raises(services.Refused, match="limit is 20 MB"):
        services.check_size(20 * 1024 * 1024 + 1)


@pytest.mark.django_db
def test_the_export_names_a_messages_files(alice):
    import json

    from accounts.exporting import conversation_json

    conv = make_conversation(alice)
    attachment = Attachment.objects.get(pk=upload(client_for(alice), conv, "plan.md", b"# Plan\n").json()["id"])
    message = Message.objects.create(conversation=conv, role="user", content="see the plan")
    Attachment.objects.filter(pk=attachment.pk).update(message=message)
    conv.active_leaf_id = message.pk
    conv.save(update_fields=["active_leaf_id"])
    exported = json.loads("".join(conversation_json(conv)))
    (entry,) = [m for m in exported["messages"] if m["id"] == message.pk]
    assert entry["attachments"] == [{"name": "plan.md", "content_type": "text/markdown", "size": 7}]


@pytest.mark.django_db
def test_a_share_link_shows_the_snapshots_files_and_nothing_else(alice, bob):
    from accounts.services import share_create, share_revoke

    conv = make_conversation(alice)
    client = client_for(alice)
    data = png(30, 30, "teal")
    shown = Attachment.objects.get(pk=upload(client, conv, "shown.png", data).json()["id"])
    private = Attachment.objects.get(pk=upload(client, conv, "private.png", png()).json()["id"])
    message = Message.objects.create(conversation=conv, role="user", content="look")
    Attachment.objects.filter(pk=shown.pk).update(message=message)
    conv.active_leaf_id = message.pk
    conv.save(update_fields=["active_leaf_id"])
    link = share_create(conversation=conv)

    page = Client().get(f"/s/{link.token}/")
    assert f"/s/{link.token}/files/{shown.pk}/" in page.content.decode()
    served = Client().get(f"/s/{link.token}/files/{shown.pk}/")
    assert served.status_code == 200 and b"".join(served.streaming_content) == data
    assert served["X-Content-Type-Options"] == "nosniff"
    # A file of the owner's that is not in the snapshot is not reachable through the link.
    assert Client().get(f"/s/{link.token}/files/{private.pk}/").status_code == 404
    assert client_for(bob).get(f"/attachments/{shown.pk}/").status_code == 404
    share_revoke(owner=alice, conversation_id=None, token=link.token)
    assert Client().get(f"/s/{link.token}/files/{shown.pk}/").status_code == 404


@pytest.mark.parametrize(
    ("width", "height", "provider", "tokens"),
    [
        # OpenAI's published examples (high detail): 1024×1024 is 4 tiles, 2048×4096 is 6 tiles.
        (1024, 1024, "openai", 765),
        (2048, 4096, "openai", 1105),
        (512, 512, "openai", 255),
        # Anthropic: width × height / 750; 1092×1092 is about 1,590; a long side over 1568, or more than
        # about 1,600 tokens (1.2 megapixels), is scaled down first.
        (1092, 1092, "anthropic", 1590),
        (3136, 1568, "anthropic", 1599),
        (200, 200, "anthropic", 54),
        # Unknown: the dearer of the two.
        (1092, 1092, "", 1590),
    ],
)
def test_images_count_by_their_providers_formula(width, height, provider, tokens):
    from conversations.context import image_tokens

    assert image_tokens(width, height, provider) == tokens


def test_a_summary_request_names_the_files_of_a_turn():
    from conversations.context import AttachmentRef, Turn, summary_prompt

    files = (AttachmentRef(id="1", name="q3.pdf", kind="pdf", content_type="application/pdf", tokens=900, pages=2),)
    turn = Turn(id=1, role="user", content="What changed?", attachments=files, provider="openai")
    _, messages = summary_prompt("", [turn])
    assert "What changed?\n(attached: q3.pdf)" in messages[0]["content"]
    assert turn.cost() == 900 + 3 + 4  # the PDF's text, the words, the framing


@pytest.mark.django_db(transaction=True)
def test_a_large_images_upright_copy_goes_with_it(alice, settings):
    conv = make_conversation(alice)
    body = upload(client_for(alice), conv, "big.png", png(4000, 3000)).json()
    attachment = Attachment.objects.get(pk=body["id"])
    assert body["size"] == attachment.size == attachment.file.size  # the original is what the user has
    with attachment.rendition.open("rb") as handle, Image.open(handle) as copy:
        assert copy.size == (1264, 948)  # what Anthropic reads (OpenAI reads less: 1024×768)
    assert len(stored_files(settings)) == 2
    client_for(alice).post(f"/conversations/{conv.pk}/delete/")
    assert stored_files(settings) == []
