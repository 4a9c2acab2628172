"""What autograd saves for backward, counted by storage."""
import torch
from torch import Tensor


class SavedTensors:
    """Context manager recording what autograd saves for backward inside it, by storage: a buffer
    saved twice (a layer's output, saved again as the next layer's input) counts once. `nbytes`
    is then the activation memory a training step holds between forward and backward."""

    def __enter__(self):
        self.storages = {}  # storage data_ptr -> nbytes
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._hooks.__exit__(*exc_info)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.nbytes():
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def holds(self, tensor: Tensor) -> bool:
        """Whether a saved tensor shares this tensor's storage."""
        return tensor.untyped_storage().data_ptr() in self.storages
