from django.urls import path

from . import views

urlpatterns = [
    path("<int:conversation_id>/messages", views.post_chat_message, name="chat-post-message"),
]
