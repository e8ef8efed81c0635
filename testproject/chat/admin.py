from django.contrib import admin

from .models import ChatHistory, Conversation

admin.site.register(Conversation)
admin.site.register(ChatHistory)
