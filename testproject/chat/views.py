from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Conversation
from .services import post_message


@csrf_exempt  # a demo JSON API; real projects authenticate it
@require_POST
def post_chat_message(request: HttpRequest, conversation_id: int) -> JsonResponse:
    conversation = get_object_or_404(Conversation, pk=conversation_id)
    try:
        body = json.loads(request.body)
        author, text = str(body["author"]), str(body["text"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "send JSON with 'author' and 'text'"}, status=400)
    message = post_message(conversation, author, text)
    return JsonResponse({"outbox_id": message.pk, "status": message.status}, status=202)
