from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("chat/", include("testproject.chat.urls")),
    path("outbox/", include("django_outbox.urls")),  # /outbox/metrics
]
