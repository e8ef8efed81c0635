from django.db import models


class Conversation(models.Model):
    """Business data written in the same transaction as the outbox row."""

    title = models.CharField(max_length=200)
    message_count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.title


class ChatHistory(models.Model):
    """The chat history, persisted asynchronously by the chat.message.created handler."""

    event_id = models.UUIDField(unique=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE)
    author = models.CharField(max_length=100)
    text = models.TextField()
    sent_at = models.DateTimeField()
    persisted_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "chat history"

    def __str__(self) -> str:
        return f"{self.author}: {self.text[:40]}"
