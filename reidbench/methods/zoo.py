"""Imports every method module so that ``@register_method`` runs (one line per method)."""

from . import baseline, clip_reid  # noqa: F401
from . import ccaf  # noqa: F401
from . import clip_scgi  # noqa: F401
from . import profd  # noqa: F401
from . import scing  # noqa: F401
from . import t2i_baseline  # noqa: F401
from . import bdam  # noqa: F401
