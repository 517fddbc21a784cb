"""One floor down: what every other package of Sluice shares and that imports none of them.

- ``redis``: the process's Redis clients (sync, and one asyncio client per event loop);
- ``keys``: the one Redis key namespace, every key Sluice writes built in one place;
- ``db``: giving a database connection back before a wait, an await or a stream;
- ``models``, ``audit``, ``audited_admin``: the audit log (who changed what; authentication
  failures), written by the gateway, the admin and the version lifecycle, read by the console.

Imports only Django, redis-py and ``inference.models``; the gateway, the rest of
``inference`` and the dashboard import it.
"""
