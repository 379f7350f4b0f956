"""What papermill's `papermill.engine` entry point loads: papermill's own
nbclient engine under the name `lua` (`--engine lua` runs the same), and,
as the reason for loading it, the Lua parameter translator's registration
(see papermill_translator.py)."""
from papermill.engines import NBClientEngine
from papermill.translators import papermill_translators

from .papermill_translator import LuaTranslator


class LuaEngine(NBClientEngine):
    pass


papermill_translators.register("lua", LuaTranslator)
