"""The GPU adapter: NVML (nvidia-ml-py), the only importer of pynvml. Reports the GPUs
this process can see, or None when there is no GPU or no driver: never an error."""

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_initialised: bool | None = None  # None: not tried yet


def _init() -> bool:
    global _initialised
    with _lock:
        if _initialised is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _initialised = True
            except Exception as exc:  # no library, no driver, no device: all "unknown"
                logger.info("no GPU visible to NVML: %s", exc)
                _initialised = False
        return _initialised


def gpus() -> list[dict[str, Any]] | None:
    """Name, memory used/total (bytes) and utilisation (%) of each GPU, or None."""
    if not _init():
        return None
    import pynvml

    try:
        result = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            utilisation = pynvml.nvmlDeviceGetUtilizationRates(handle)
            result.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_used_bytes": int(memory.used),
                    "memory_total_bytes": int(memory.total),
                    "utilization_percent": int(utilisation.gpu),
                }
            )
        return result
    except Exception as exc:
        logger.warning("NVML failed: %s", exc)
        return None
