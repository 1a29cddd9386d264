"""The published OpenAPI document, generated from the app's routes and models.

`python -m gateway.openapi` writes `contracts/openapi.json` (sorted keys,
indent 2, trailing newline); a test fails when the committed file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import contracts
from animus.settings import Settings

OPENAPI_PATH = Path(contracts.__file__).parent / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI schema of an app built with default settings."""
    from gateway.app import create_app

    app = create_app(Settings())
    return app.openapi_schema.to_schema()


def render_openapi() -> str:
    return json.dumps(openapi_document(), sort_keys=True, indent=2) + "\n"


def write_openapi(path: Path = OPENAPI_PATH) -> Path:
    """Write the OpenAPI document to `path` and return it."""
    path.write_text(render_openapi(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = write_openapi(Path(args[0]) if args else OPENAPI_PATH)
    sys.stderr.write(f"wrote {target}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
