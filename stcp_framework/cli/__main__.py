"""``python -m stcp_framework.cli``: the ``stcp`` command (how ``--workers`` starts its workers)."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
