"""torch.distributed for dataset runs: which process this is, its device, and the two collectives a run needs.

>>> from attrib.runs.distributed import World
>>> World(rank=1, size=2, local_rank=1).mine(5)       # chunk k goes to process k mod size
[1, 3]
>>> World().distributed
False

Under ``torchrun`` (or ``python -m torch.distributed.run``) every process reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment, joins the process group (NCCL on CUDA, gloo on the CPU) and uses
``cuda:LOCAL_RANK`` when CUDA is there. Rank 0 checks the run's folder and tells the others which chunks are
done (:func:`on_main`); each process computes its own chunks and writes its own shards and index file; after
a barrier rank 0 merges the index files. Without those variables a run is one process and nothing is joined.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from ..errors import RunError

__all__ = ["World", "world_from_env", "joined", "device_for", "barrier", "on_main"]


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, n_chunks: int) -> list[int]:
        """The chunks this process computes: every ``size``-th, from its rank."""
        return list(range(self.rank, n_chunks, self.size))


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise RunError(f"the environment variable {name}={text!r:.20} is not an int; torchrun sets it, so start "
                       "the run with `torchrun --nproc-per-node N -m attrib run ...` or unset it.") from None


def world_from_env() -> World:
    """The world that torchrun describes in the environment (one process when it describes none)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise RunError(f"RANK={rank} and WORLD_SIZE={size} do not fit (0 <= RANK < WORLD_SIZE); start the run with "
                       "torchrun, which sets both.")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


@contextlib.contextmanager
def joined(world: World) -> Iterator[None]:
    """The default process group for a distributed world (created here unless the caller made one, and then
    destroyed here when the block ends, whatever happens); nothing for one process."""
    owned = world.distributed and not dist.is_initialized()
    if owned:
        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=world.rank,
                                world_size=world.size)
    try:
        yield
    finally:
        if owned:
            dist.destroy_process_group()


def device_for(world: World, device: str | torch.device | None = None) -> torch.device:
    """``device`` when given (one process); otherwise ``cuda:LOCAL_RANK`` where CUDA is, else the CPU."""
    if torch.cuda.is_available() and (world.distributed or device is None):
        return torch.device("cuda", world.local_rank if world.distributed else torch.cuda.current_device())
    return torch.device("cpu") if device is None else _checked_device(device)


def _checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that this machine has (one :class:`~attrib.RunError` otherwise)."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RunError(f"device {device!r:.40} is not a torch device; pass e.g. 'cpu' or 'cuda:1', or leave it out "
                       "(CUDA when there, else the CPU).") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found.type == "cuda" and (found.index or 0) >= count:
        raise RunError(f"device {str(found)!r} is not on this machine, which has {count} CUDA device(s); pass 'cpu'"
                       f"{' or cuda:0 to cuda:' + str(count - 1) if count else ''}, or leave the device out.")
    return found


def barrier(world: World) -> None:
    """Wait until every process of the world is here."""
    if not world.distributed:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[world.local_rank])
    else:
        dist.barrier()


def on_main(world: World, step: Callable[[], Any]) -> Any:
    """``step()`` run by rank 0 alone; every process gets its value, or raises its error (as a
    :class:`~attrib.RunError` on the other ranks), so that no process waits for one that failed."""
    if not world.distributed:
        return step()
    outcome: list[Any] = [None]
    failure: BaseException | None = None
    if world.main:
        try:
            outcome = [("value", step())]
        except Exception as err:          # told to every rank, then raised again on this one
            failure, outcome = err, [("error", str(err))]
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    kind, payload = outcome[0]
    if kind == "error":
        raise RunError(f"rank 0 stopped the run: {payload}")
    return payload
