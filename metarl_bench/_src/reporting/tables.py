"""The terminal tables moved to ``evaluation.tables`` (``Result.table()`` lives below the
reports); these names stay for the regression gate, which imports them from here."""

from metarl_bench._src.evaluation.tables import number as _num  # noqa: F401
from metarl_bench._src.evaluation.tables import text_table as _table  # noqa: F401
