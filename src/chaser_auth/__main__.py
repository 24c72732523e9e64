"""`python -m chaser_auth …` — the same as the `chaser-auth` command."""

from chaser_auth.cli import main

raise SystemExit(main())
