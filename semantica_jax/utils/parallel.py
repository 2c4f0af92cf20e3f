"""Device mesh, shardings and multi-host helpers.

One code path for 1 CPU, 8 simulated CPU devices, a GPU node, a SLURM cluster and a TPU
pod slice: `jax.jit` over a `Mesh` with axes ('data', 'fsdp'). The batch is split over
both axes; parameters are replicated over 'data' and, when the 'fsdp' axis is larger than
1, sharded over it along their largest divisible dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")


def launched_processes(environ=os.environ) -> int:
    """How many processes the environment's launcher started (what initialize_distributed reads).

    SEMANTICA_NUM_PROCESSES (launch/local_multihost.sh) or SLURM_NTASKS; Cloud TPU pod
    slices (TPU_WORKER_HOSTNAMES) count one per worker host. 1 when none says more.
    """
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return max(
        int(environ.get("SEMANTICA_NUM_PROCESSES", "1")),
        int(environ.get("SLURM_NTASKS", "1")),
        len(hosts.split(",")) if hosts else 1,
    )


def initialize_distributed() -> None:
    """Initialises multi-process JAX when the environment says there are several processes.

    Three launchers are understood:
      * `launch/local_multihost.sh` sets SEMANTICA_COORDINATOR, SEMANTICA_NUM_PROCESSES and
        SEMANTICA_PROCESS_ID (CPU processes on one machine, gloo collectives);
      * SLURM (`SLURM_NTASKS` > 1) and Cloud TPU pod slices, which
        `jax.distributed.initialize()` detects by itself.
    A single process does nothing.
    """
    num = int(os.environ.get("SEMANTICA_NUM_PROCESSES", "1"))
    if num > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["SEMANTICA_COORDINATOR"],
            num_processes=num,
            process_id=int(os.environ["SEMANTICA_PROCESS_ID"]),
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize()
    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )


def make_mesh(fsdp: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh over all global devices.

    Args:
      fsdp: size of the parameter-sharding axis; must divide the device count.
    """
    n = jax.device_count()
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}")
    devices = np.asarray(jax.devices()).reshape(n // fsdp, fsdp)
    # Linen code relies on automatic sharding propagation, hence Auto axis types.
    return Mesh(devices, DATA_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _param_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Shards the largest dimension divisible by `fsdp` over 'fsdp' (small arrays stay whole)."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp == 0:
            spec = [None] * len(shape)
            spec[d] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int = 2**14) -> Any:
    """NamedShardings for a tree of `jax.ShapeDtypeStruct` (FSDP-aware).

    Args:
      abstract_state: the state's shapes (from `jax.eval_shape`).
      mesh: the ('data', 'fsdp') mesh.
      min_size: arrays with fewer elements stay replicated (sharding them costs more
        communication than the memory it saves).
    """
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, _param_spec(x.shape, fsdp, min_size)), abstract_state
    )


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's slice of a batch into global arrays sharded over the mesh.

    Args:
      local_batch: numpy arrays with leading dimension B / process_count.
    Returns:
      global jax.Arrays with leading dimension B.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "train.batch_size") -> int:
    """Validates a global batch size against the mesh; returns the per-process batch size."""
    if global_batch_size <= 0:
        raise ValueError(f"config.{field}={global_batch_size} must be positive")
    if global_batch_size % mesh.size:
        raise ValueError(
            f"config.{field}={global_batch_size} is not divisible by the number of devices "
            f"({mesh.size}); choose a multiple of {mesh.size}"
        )
    return global_batch_size // jax.process_count()


def any_process(flag: bool) -> bool:
    """True if `flag` is true on any process (a cheap all-gather; trivial on one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
