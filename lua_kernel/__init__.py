"""lua_kernel: a Jupyter kernel for Lua 5.4 whose sessions survive."""
from .persist.snapshot import SnapshotError
from .session import CellResult, LuaError, LuaInterrupt, LuaMemoryError, LuaSyntaxError, Session

__version__ = "0.1.0"
__all__ = ["Session", "CellResult", "LuaError", "LuaSyntaxError", "LuaMemoryError",
           "LuaInterrupt", "SnapshotError", "__version__"]
