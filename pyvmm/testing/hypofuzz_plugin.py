"""A pytest plugin `pyvmm fuzz` gives HypoFuzz's collection (`-p`): it makes
the fuzz profile the current one in every HypoFuzz process.

HypoFuzz keeps its own records in `settings().database`, the current
profile's, not the one a target's @settings names; and hypothesis picks its
"ci" profile by itself when $CI is set, which has no database. Its workers
then died on their first write and the campaign found nothing.
"""

from hypothesis import settings

from . import settings_profile

settings.load_profile(settings_profile())
