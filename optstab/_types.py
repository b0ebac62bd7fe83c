"""Type aliases shared across optstab."""

from __future__ import annotations

import os
from typing import Union

__all__ = ["PathLike"]

#: A file or folder path: a string or an ``os.PathLike``.
PathLike = Union[str, "os.PathLike[str]"]
