"""``python manage.py createapikey --user NAME [--policy POLICY]``: print a new API key for NAME
(created if missing); with ``--policy`` the key gets that rate-limit policy of its own."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.models import RateLimitPolicy
from gateway.services import apikey_create


class Command(BaseCommand):
    help = "Create an API key for a user (the user is created if it does not exist) and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username")
        parser.add_argument("--name", default="", help="a label for the key")
        parser.add_argument("--policy", default="", help="name of a rate-limit policy for this key")

    def handle(self, *args: Any, **options: Any) -> None:
        policy = None
        if options["policy"]:
            policy = RateLimitPolicy.objects.filter(name=options["policy"]).first()
            if policy is None:
                names = ", ".join(RateLimitPolicy.objects.values_list("name", flat=True))
                raise CommandError(f"no rate-limit policy named {options['policy']!r} (have: {names})")
        user, created = get_user_model().objects.get_or_create(username=options["user"])
        if created:
            user.set_unusable_password()
            user.save()
            self.stderr.write(f"created user {user.username}")
        issued = apikey_create(user=user, name=options["name"], policy=policy)
        self.stdout.write(issued.raw_key)
