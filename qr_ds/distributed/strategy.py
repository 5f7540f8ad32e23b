"""One object owns process groups, collectives and DeepSpeed; the trainer never touches raw ranks and
never imports deepspeed. ``prepare_student`` builds a student's DeepSpeed config and engine and hands
back a ``StudentEngine`` (engines.py), through which every later engine call goes.

Every rank creates every group in the same order (torch.distributed requires it). Groups whose
ranks share one GPU fall back to gloo, since NCCL refuses a device twice in one communicator.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qr_ds.distributed import engines
from qr_ds.distributed.engines import StudentEngine
from qr_ds.distributed.topology import Layout, local_rank


@dataclass
class _StudentMPU:
    """DeepSpeed's ``mpu`` hook: the student's own data-parallel group, no model parallelism."""

    dp_group: object
    dp_ranks: tuple[int, ...]
    self_group: object

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_group_ranks(self):
        return list(self.dp_ranks)

    def get_data_parallel_world_size(self):
        return len(self.dp_ranks)

    def get_data_parallel_rank(self):
        return self.dp_ranks.index(dist.get_rank())

    def get_model_parallel_group(self):
        return self.self_group

    def get_model_parallel_world_size(self):
        return 1

    def get_model_parallel_rank(self):
        return 0


def pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for_local_rank(backend: str) -> torch.device:
    if backend == "nccl" or torch.cuda.is_available():
        local = local_rank()
        n = torch.cuda.device_count()
        # More ranks than GPUs (a two-student run on one GPU): ranks share devices round-robin.
        torch.cuda.set_device(local % n)
        return torch.device("cuda", local % n)
    return torch.device("cpu")


def release_deepspeed_shm_name(rank: int) -> None:
    """Unlink the shared-memory file DeepSpeed's CPU all-reduce creates per rank and never removes.

    Each run leaves ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MiB)
    behind; a few hundred launches fill /dev/shm and starve the machine's memory. Peers open the
    name only during ``init_distributed``, so once a collective has completed on every rank the
    name can go; the mappings stay valid until exit, even a SIGKILL leaves nothing behind.
    """
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    path = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Strategy:
    def __init__(self, layout_fn, backend: str = "auto", timeout_s: float = 600.0):
        """``layout_fn(world_size) -> Layout``: the world size is known only after init."""
        import deepspeed

        self.backend = pick_backend(backend)
        self.timeout = datetime.timedelta(seconds=timeout_s)
        deepspeed.init_distributed(dist_backend=self.backend, timeout=self.timeout)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        try:
            self.layout: Layout = layout_fn(self.world_size)
            self.device = device_for_local_rank(self.backend)
            self.local_students = self.layout.students_on(self.rank)
            self._build_groups()
        finally:  # also when the layout refuses the world: the 66 MiB file must not outlive us
            release_deepspeed_shm_name(self.rank)

    # -- groups -----------------------------------------------------------------------------
    def _devices_of(self, ranks) -> list[int]:
        # Node-local device index of each rank, from LOCAL_RANK exchanged once.
        return [self._local_device[r] for r in ranks]

    def _new_group(self, ranks: tuple[int, ...]):
        ranks = tuple(sorted(ranks))
        backend = self.backend
        if backend == "nccl" and len(set(self._devices_of(ranks))) < len(ranks):
            backend = "gloo"
        return dist.new_group(list(ranks), backend=backend, timeout=self.timeout)

    def _build_groups(self) -> None:
        dev = torch.tensor([self.device.index or 0, self._node_id()], dtype=torch.long)
        gathered = [torch.zeros_like(dev) for _ in range(self.world_size)]
        dist.all_gather(gathered, dev if self.backend == "gloo" else dev.to(self.device))
        self._local_device = {r: tuple(t.tolist()) for r, t in enumerate(gathered)}
        self.singletons = [self._new_group((r,)) for r in range(self.world_size)]
        self.student_groups = [self._new_group(r) for r in self.layout.student_ranks]
        self.cross = {g: self._new_group(g) for g in self.layout.cross_groups()}

    @staticmethod
    def _node_id() -> int:
        return int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "0")))

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def scope_zero3_checks(self, student: int) -> None:
        """ZeRO-3 verifies over the *world* that every rank traced the same module order, assuming
        one model everywhere; here each student has its own, so the check runs in its own group."""
        from deepspeed.runtime.zero import partitioned_param_coordinator as ppc

        group = self.student_groups[student]

        def same_on_student_ranks(ints: list[int]) -> None:
            seen: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(seen, list(ints), group=group)
            if any(x != seen[0] for x in seen):
                raise RuntimeError(f"ZeRO-3: ranks of student {student} traced different module orders")

        ppc.assert_ints_same_as_other_ranks = same_on_student_ranks

    # -- engines ----------------------------------------------------------------------------
    def prepare_student(self, student: int, module, optimizer, scheduler, cfg) -> StudentEngine:
        """The student's DeepSpeed engine on its own data-parallel group. ``cfg`` is the TrainConfig:
        the student's DeepSpeed JSON and dtype, and the batch, accumulation and clipping of the run."""
        sc = cfg.students[student]
        ds = engines.ds_config(engines.resolve_ds_config(sc.deepspeed, f"students[{student}].deepspeed"),
                               cfg.micro_batch_paths, cfg.grad_accum, cfg.grad_clip, sc.dtype)
        engine = StudentEngine(engines.create_engine(module, optimizer, scheduler, ds, self.mpu(student)),
                               self.writes_for(student))
        if engine.zero3 and not self.layout.placement.students_share_ranks:
            self.scope_zero3_checks(student)
        return engine

    def writes_for(self, student: int) -> bool:
        """The student's first data-parallel rank writes its loadable folder."""
        return self.layout.dp_rank(student, self.rank) == 0

    def mpu(self, student: int) -> _StudentMPU:
        return _StudentMPU(self.student_groups[student], self.layout.student_ranks[student],
                           self.singletons[self.rank])

    # -- collectives ------------------------------------------------------------------------
    def _comm_tensor(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.backend == "nccl" else t.cpu()

    def broadcast_from_coordinator(self, t: torch.Tensor) -> torch.Tensor:
        buf = self._comm_tensor(t.contiguous())
        dist.broadcast(buf, src=0)
        return buf.to(t.device)

    def sum_to_coordinator(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over all ranks; the result is meaningful on the coordinator."""
        buf = self._comm_tensor(t.contiguous())
        dist.reduce(buf, dst=0, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def gather_chunk(self, chunk: int, local: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Every student's tensor for ``chunk``, in student order.

        ``local`` maps each student this rank runs to its tensor; the rest arrive by all-gather
        over the chunk's cross-student group (identical shapes on every member).
        """
        owners = self.layout.cross_group(chunk)
        members = tuple(sorted(set(owners)))
        if len(members) == 1:  # students share this rank: everything is here
            return [local[s] for s in range(self.layout.n_students)]
        (s_here,) = local  # students on their own ranks: one student per rank
        mine = self._comm_tensor(local[s_here].detach().contiguous())
        out = [torch.empty_like(mine) for _ in members]
        dist.all_gather(out, mine, group=self.cross[members])
        dev = local[s_here].device
        return [out[members.index(r)].to(dev) for r in owners]

    def barrier(self) -> None:
        dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` on every rank: one rank's refusal stops all, none hangs."""
        t = torch.tensor([0 if ok else 1], dtype=torch.long)
        buf = self._comm_tensor(t)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return int(buf.item()) == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
