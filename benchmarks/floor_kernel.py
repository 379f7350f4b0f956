"""The ipykernel floor: a kernel whose do_execute returns at once, run by
ipykernel's own application. bench_execute.py measures round trips against
it (what ipykernel costs per message, with nothing to execute).

    python benchmarks/floor_kernel.py -f CONNECTION_FILE
"""
from __future__ import annotations

import sys

from ipykernel.kernelbase import Kernel


class FloorKernel(Kernel):
    implementation = "floor"
    implementation_version = "1"
    language = "none"
    language_info = {"name": "none", "mimetype": "text/plain", "file_extension": ".txt"}
    banner = "does nothing, at once"

    async def do_execute(self, code, silent, store_history=True, user_expressions=None,
                         allow_stdin=False, **kwargs):
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}


if __name__ == "__main__":
    sys.modules.setdefault("debugpy", None)      # as our kernel: no debugger import
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=FloorKernel)
