"""The delivery log: filtered reads of the ``deliveries`` table.

Where each part is decided:

* ``filters`` — what a read shows: ``LogFilter``, the sorts, parsing of typed
  instants, ``InvalidLogQuery``;
* ``paging`` — keyset pages and their cursors (``list_page``);
* ``entries`` — the columns read and the names looked up for them (``LogEntry``);
* ``export`` — the whole log streamed out as CSV or NDJSON.

The names other packages use are importable from here.
"""

from scheduler.analytics.log.entries import (
    MODE_ZH,
    PART_ZH,
    STATUS_ZH,
    TARGET_ZH,
    LogEntry,
    LogPage,
    content_text,
    read_entries,
)
from scheduler.analytics.log.export import (
    FORMULA_START,
    csv_field,
    csv_header,
    csv_line,
    export_csv,
    export_ndjson,
    iter_entries,
)
from scheduler.analytics.log.filters import (
    MAX_ID,
    MAX_PAGE,
    ORDERS,
    SORTS,
    InvalidLogQuery,
    LogFilter,
    check_sort,
    parse_instant,
)
from scheduler.analytics.log.paging import Cursor, list_page
from sopbot.sql import read_snapshot, unindexed

__all__ = [
    "FORMULA_START",
    "MAX_ID",
    "MAX_PAGE",
    "MODE_ZH",
    "ORDERS",
    "PART_ZH",
    "SORTS",
    "STATUS_ZH",
    "TARGET_ZH",
    "Cursor",
    "InvalidLogQuery",
    "LogEntry",
    "LogFilter",
    "LogPage",
    "check_sort",
    "content_text",
    "csv_field",
    "csv_header",
    "csv_line",
    "export_csv",
    "export_ndjson",
    "iter_entries",
    "list_page",
    "parse_instant",
    "read_entries",
    "read_snapshot",
    "unindexed",
]
