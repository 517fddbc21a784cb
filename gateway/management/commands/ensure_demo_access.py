"""Create, once, the admin login and the demo API key that `make run` prints.

The key is hashed in the database, so its plain text is kept (mode 0600) in the var
directory to be printed again on later starts. For local development only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from gateway.selectors import apikey_get_active
from gateway.services import apikey_create


class Command(BaseCommand):
    help = "Ensure an admin user and a demo API key exist; print them as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", default=str(Path(settings.VAR_DIR) / "run" / "demo-credentials.json"))

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["file"])
        saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        User = get_user_model()
        admin = User.objects.filter(username="admin").first()
        if admin is None or not saved.get("admin_password"):
            password = secrets.token_urlsafe(12)
            admin = admin or User(username="admin", email="admin@localhost")
            admin.is_staff = admin.is_superuser = True
            admin.set_password(password)
            admin.save()
            saved["admin_password"] = password
        demo, _ = User.objects.get_or_create(username="demo")
        if not saved.get("api_key") or apikey_get_active(raw_key=saved["api_key"]) is None:
            saved["api_key"] = apikey_create(user=demo, name="demo (make run)").raw_key
        saved["admin_user"] = "admin"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(saved, handle)
        self.stdout.write(json.dumps(saved))
