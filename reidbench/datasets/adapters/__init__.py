"""Dataset adapters, one module per family; importing this package registers them all.

Each adapter is ``fn(root) -> ReidDataset`` where ``root`` is the folder that holds
the dataset's own folder (torchreid's convention) or that folder itself.
"""

from . import clothes, holistic, occluded, text  # noqa: F401  (registration side effects)
from ._common import SideCars, read_side_car_meta

__all__ = ["SideCars", "read_side_car_meta"]
