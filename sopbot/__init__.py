"""Shared kernel of sopbot: settings, database engine/session and the clock.

Every domain package (audiences, sop_templates, scheduler, channels, api) may
import from here; this package imports from none of them.
"""

__version__ = "0.1.0"
