"""A tool's BPF object opened, loaded and attached as a unit, for the tools whose object also
serves an agent collector (cgnet, execcount): open() attaches, close() detaches, and `with`
does both."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Self

from ..toolkit import object_path, open_object

if TYPE_CHECKING:
    from ..bpf.object import BpfObject


class AttachedObject:
    obj: BpfObject | None = None

    def open(self) -> Self:
        raise NotImplementedError

    def _open_object(self, name: str, setup: Callable[[BpfObject], None]) -> BpfObject:
        """Opens tools/NAME.bpf.o and runs setup(obj) on it (load, attach); a failure closes it."""
        self.obj = open_object(object_path(name), needs_tracefs=False)
        try:
            setup(self.obj)
        except BaseException:
            self.close()
            raise
        return self.obj

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
