"""``python -m kavach``: the same program as the ``kavach`` command."""

from kavach.cli import main

raise SystemExit(main())
