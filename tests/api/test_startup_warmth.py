"""What ``sopbot serve`` does once started so that no operator waits for it:
every page template compiled, and start-up's objects left out of full GC passes."""

from __future__ import annotations

import gc
import subprocess
import sys

from api import i18n


def test_warm_compiles_every_page_template_in_every_language() -> None:
    i18n.warm()
    for locale in i18n.LOCALES:
        env = i18n.environment(locale)
        names = env.list_templates(extensions=["html"])
        assert names
        cached = {template.name for template in env.cache.values()}  # type: ignore[union-attr]
        assert set(names) <= cached


def test_freezing_start_up_objects_leaves_them_out_of_full_collections() -> None:
    # In a process of its own: frozen objects stay for the process's life.
    code = (
        "import gc; from sopbot.gc_pauses import freeze_startup_objects; "
        "import api.app; before = gc.get_freeze_count(); freeze_startup_objects(); "
        "after = gc.get_freeze_count(); assert before == 0 and after > 10000, (before, after); "
        "print(after)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert gc.get_freeze_count() == 0  # this process never froze anything
