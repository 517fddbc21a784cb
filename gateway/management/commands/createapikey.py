"""``python manage.py createapikey --user NAME``: print a new API key for NAME (created if missing)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from gateway.services import apikey_create


class Command(BaseCommand):
    help = "Create an API key for a user (the user is created if it does not exist) and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = get_user_model().objects.get_or_create(username=options["user"])
        if created:
            user.set_unusable_password()
            user.save()
            self.stderr.write(f"created user {user.username}")
        issued = apikey_create(user=user, name=options["name"])
        self.stdout.write(issued.raw_key)
