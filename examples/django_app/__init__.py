"""A minimal Django project with ratemw (one settings module).

Run it from the repository root with ``gunicorn examples.django_app.wsgi``, or under ASGI
with ``uvicorn examples.django_app.asgi:application``.
"""
