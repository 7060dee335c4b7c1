"""kavach's Python API in one go: users and sessions on a SQLite file.

Run it as is:  python examples/quickstart.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from kavach import create_kavach


def main() -> int:
    """Create a user, sign in, open, resolve and revoke a session; print each step."""
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{Path(tmp) / 'kavach.db'}"
        with create_kavach(database) as kavach:
            print(f"opened {kavach.store.kind} store, schema version "
                  f"{kavach.store.schema_version()}")

            user = kavach.users.create("jane@acme.io", password="correct horse battery",
                                       name="Jane")
            print(f"created user {user.email} (id {user.id})")

            same = kavach.users.authenticate("JANE@acme.io", "correct horse battery")
            print(f"authenticated {same.email}: same user = {same.id == user.id}")

            issued = kavach.sessions.create(user.id)
            print(f"issued a session token ({len(issued.token)} characters), "
                  f"expires {issued.expires_at:%Y-%m-%d %H:%M} UTC")

            session = kavach.sessions.resolve(issued.token)
            assert session is not None
            print(f"resolved the token to user {session.user_id}")

            kavach.sessions.revoke(issued.token)
            print(f"revoked it; resolves now to {kavach.sessions.resolve(issued.token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
