# TEMPORARY dev shim until main has overwrite=True (not committed)
from dacapo_store.weights_store import WeightsStore
from dacapo_store.errors import CheckpointNotFoundError
import inspect
if "overwrite" not in inspect.signature(WeightsStore.store_weights).parameters:
    _orig = WeightsStore.store_weights
    def store_weights(self, run, iteration, overwrite=False):
        if overwrite:
            try:
                self.remove(run, iteration)
            except CheckpointNotFoundError:
                pass
        return _orig(self, run, iteration)
    WeightsStore.store_weights = store_weights
