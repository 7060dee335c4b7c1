"""Polar's API hosts (``polar-api.md`` §1). A module of its own, free of imports, so the
``kavach`` command can show them (``kavach polar doctor --help``) without loading the
HTTP client."""

PRODUCTION_API_URL = "https://api.polar.sh"
SANDBOX_API_URL = "https://sandbox-api.polar.sh"
