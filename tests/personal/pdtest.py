"""What the personal-data tests share: the test users and their key."""

from __future__ import annotations

import base64
import os
import secrets

SUFFIX = secrets.token_hex(4)
EMAIL = f"erin.{SUFFIX}@example.org"
NAME = f"Erin Example {SUFFIX}"
OTHER_EMAIL = f"olaf.{SUFFIX}@example.org"
READER_NAME = f"Rita Reader {SUFFIX}"
READER_EMAIL = f"rita.{SUFFIX}@example.org"
CLIENT = ("192.0.2.77", 50077)
ERIN = {"Authorization": "Bearer erin-token"}
OLAF = {"Authorization": "Bearer olaf-token"}
OPERATOR = {"Authorization": "Bearer operator-token"}
RITA = {"Authorization": "Bearer rita-token"}
"""A user only the lazy-subject test uses: their first request is a read."""
PERSONAL_DATA_KEY = base64.b64encode(os.urandom(32)).decode()
