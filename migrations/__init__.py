"""Waygate's schema migrations, applied in order by sqlite-utils' built-in ``Migrations``.

Each numbered module registers one migration; applied ones are recorded in
``_sqlite_migrations``. Add a new module with the next number and import it below; never edit
a migration that has shipped.
"""

from sqlite_utils import Migrations

migrations = Migrations("waygate")

from . import m001_api_keys  # noqa: E402,F401  (registration order is application order)
from . import m002_executions  # noqa: E402,F401
from . import m003_errors  # noqa: E402,F401
from . import m004_stats_triggers  # noqa: E402,F401
