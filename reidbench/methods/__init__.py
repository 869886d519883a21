"""Methods: one module per method, shared components, and the registry.

``list_methods()`` / ``get_method(name)`` import ``zoo`` (every method module) on first use.
"""

from .base import LOGGED, REQUIREMENTS, TEXT_KINDS, DataSpec, Method, Stage, get_method, list_methods, register_method

__all__ = ["LOGGED", "REQUIREMENTS", "TEXT_KINDS", "DataSpec", "Method", "Stage", "get_method", "list_methods",
           "register_method"]
