"""Process groups for the actor: torch.distributed (gloo on CPU, NCCL on GPU) plus Megatron's parallel state.

`initialize_model_parallel(tp, pp, seed=...)` works under `torchrun` and in a plain single process (it
then makes a world of one on a free localhost port). The returned `ParallelGroups` is what the rest of
`megatron_ext` receives explicitly instead of reading `parallel_state` everywhere.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_ext.cpu import enable_cpu_fallback


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups and ranks of this process (Megatron order tp-cp-ep-dp-pp).

    tp / pp / dp / mp: tensor-, pipeline-, data- and model-parallel (tp x pp) groups.
    """

    tp: dist.ProcessGroup
    pp: dist.ProcessGroup
    dp: dist.ProcessGroup
    mp: dist.ProcessGroup
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    world_rank: int
    world_size: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_torch_distributed() -> None:
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:  # a plain process: a world of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ["RANK"] = "0"
        os.environ["WORLD_SIZE"] = "1"
        os.environ["LOCAL_RANK"] = "0"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def initialize_model_parallel(tp: int, pp: int, *, seed: int) -> ParallelGroups:
    """Init torch.distributed if needed, then Megatron's TP/PP/DP groups and its RNG tracker.

    The world size must be a multiple of tp*pp; DP is world // (tp*pp). `seed` seeds the CPU RNG and
    Megatron's model-parallel RNG tracker (the same on every rank up to Megatron's TP offset).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if tp < 1 or pp < 1:
        raise ValueError(f"tensor/pipeline parallel sizes must be >= 1, got tp={tp}, pp={pp}")
    enable_cpu_fallback()
    _init_torch_distributed()
    world = dist.get_world_size()
    if world % (tp * pp) != 0:
        raise ValueError(f"world size {world} is not a multiple of tp*pp = {tp}*{pp}")
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return current_groups()


def current_groups() -> ParallelGroups:
    """The ParallelGroups of an already initialised Megatron parallel state."""
    from megatron.core import parallel_state as ps

    return ParallelGroups(
        tp=ps.get_tensor_model_parallel_group(),
        pp=ps.get_pipeline_model_parallel_group(),
        dp=ps.get_data_parallel_group(),
        mp=ps.get_model_parallel_group(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        world_rank=dist.get_rank(),
        world_size=dist.get_world_size(),
    )


def destroy_model_parallel() -> None:
    """Tear down Megatron's parallel state and the default process group (if any)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
