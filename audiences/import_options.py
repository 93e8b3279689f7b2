"""The options of a CSV contact import, shared by ``sopbot import contacts`` and
``POST /api/contacts/import``. Kept free of imports so the CLI can build its
``--help`` from it without loading the database layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImportOptions:
    """How a CSV file is read and applied: the same for ``sopbot import contacts``
    and ``POST /api/contacts/import``."""

    timezone: str  # of times without an offset
    encoding: str = "utf-8"
    dry_run: bool = False
    allow_partial: bool = False
    create_accounts: bool = False


# One help text per option, for the CLI's --help and the API's schema alike.
OPTION_HELP = {
    "dry_run": "check and count, write nothing",
    "allow_partial": "import the good rows even if some rows are bad",
    "create_accounts": "register accounts the file names that sopbot does not know",
    "timezone": "zone of times without an offset (default: settings)",
    "encoding": "file encoding, e.g. gbk or gb18030; auto tells UTF-8 from GBK/GB18030",
}
