"""Upload a file into a conversation, serve it back to its owner only, remove it before sending."""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET, require_POST

from accounts.selectors import live_share
from conversations.models import Attachment
from conversations.selectors import conversation_for_user

from . import services, tasks
from .sniff import Refused

# Served inline (the thread's thumbnails and the lightbox); everything else downloads.
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def _refused(reason: str) -> JsonResponse:
    return JsonResponse({"error": reason}, status=400)


@login_required
@require_POST
def upload(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """Store the multipart field `file`; answer {id, name, size, content_type}, or 400 with a reason."""
    conversation = conversation_for_user(request.user, conversation_id)
    # A body that is plainly too large is refused before its files are parsed.
    try:
        services.check_size(int(request.META.get("CONTENT_LENGTH") or 0) - 64 * 1024)
    except Refused as exc:
        return _refused(str(exc))
    except ValueError:
        return _refused("Bad Content-Length.")
    files = request.FILES.getlist("file")
    if len(files) != 1:
        return _refused("Send one file in the multipart field `file`.")
    try:
        attachment = services.attachment_upload(
            owner=request.user,  # type: ignore[arg-type]  # login_required: never anonymous
            conversation=conversation,
            upload=files[0],
        )
    except Refused as exc:
        return _refused(str(exc))
    finally:
        for f in files:
            f.close()
    tasks.schedule_sweep()
    return JsonResponse(attachment.as_json(), status=201)


def _own(request: HttpRequest, attachment_id: uuid.UUID) -> Attachment:
    """The attachment if the requester owns it; 404 otherwise (never 403: its existence is not told)."""
    attachment = Attachment.objects.filter(pk=attachment_id, owner_id=request.user.pk).first()
    if attachment is None:
        raise Http404("No such file.")
    return attachment


@login_required
@require_GET
def serve(request: HttpRequest, attachment_id: uuid.UUID) -> HttpResponseBase:
    """The file's bytes, to its owner: images inline, anything else as a download, never sniffed."""
    return _file_response(_own(request, attachment_id))


@require_GET
def shared(request: HttpRequest, token: str, attachment_id: uuid.UUID) -> HttpResponseBase:
    """A file of a share link's snapshot, to anyone with the link (404 once revoked, or not in it)."""
    link = live_share(token)
    wanted = str(attachment_id)
    if not any(f.get("id") == wanted for m in link.messages for f in m.get("attachments", ())):
        raise Http404("No such file.")
    attachment = Attachment.objects.filter(pk=attachment_id, owner_id=link.owner_id).first()
    if attachment is None:
        raise Http404("No such file.")
    response = _file_response(attachment)
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _file_response(attachment: Attachment) -> HttpResponseBase:
    try:
        handle = attachment.file.open("rb")
    except FileNotFoundError:
        raise Http404("The file is gone.") from None
    inline = attachment.content_type in INLINE_TYPES
    content_type = attachment.content_type
    if attachment.kind == "text":
        # Text is text whatever its name (an .html or .svg file is never rendered).
        content_type = f"{'text/plain' if content_type.startswith('text/') else content_type}; charset=utf-8"
    response = FileResponse(handle, as_attachment=not inline, filename=attachment.name, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@login_required
@require_POST
def remove(request: HttpRequest, attachment_id: uuid.UUID) -> HttpResponse:
    """Remove an upload not sent yet (the chip's ✕); a sent one stays with its message."""
    attachment = _own(request, attachment_id)
    if attachment.message_id is not None:
        return _refused("That file was sent with a message; delete the conversation to remove it.")
    services.attachment_remove(attachment=attachment)
    return HttpResponse(status=204)
