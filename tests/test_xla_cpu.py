"""utils.xla_cpu: project defaults added to XLA_FLAGS, the user's own setting wins."""

from semantica_jax.utils import xla_cpu


def test_defaults_are_appended_once_and_user_flags_win():
    flag = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_cpu.with_defaults("") == flag
    both = xla_cpu.with_defaults("--xla_force_host_platform_device_count=1")
    assert both == f"--xla_force_host_platform_device_count=1 {flag}"
    assert xla_cpu.with_defaults(both) == both  # idempotent
    # Several forced host devices: no YNN fusion (wrong guided samples there, xla_cpu doc).
    eight = "--xla_force_host_platform_device_count=8"
    assert xla_cpu.with_defaults(eight) == eight
    mine = "--xla_cpu_experimental_ynn_fusion_type=-dot"
    assert xla_cpu.with_defaults(mine) == mine  # the user's value is kept
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_cpu.apply_defaults(env) == f"--xla_dump_to=/tmp/x {flag}" == env["XLA_FLAGS"]


def test_sampling_devices_split_the_batch_evenly_and_yield_to_the_user():
    assert xla_cpu.sampling_device_count(50, 2) == 2
    assert xla_cpu.sampling_device_count(50, 16) == 10  # the most devices that divide 50
    assert xla_cpu.sampling_device_count(7, 2) == 1
    assert xla_cpu.sampling_device_count(200, 8) == 8
    # The default YNN fusion goes with several devices; other flags stay.
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=dot"}
    new = xla_cpu.apply_sampling_devices(env, 50, cores=2)
    assert (
        new == env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=2"
    )
    assert xla_cpu.with_defaults(new) == new  # and is not added back
    assert xla_cpu.apply_sampling_devices(env, 50, cores=2) == new  # idempotent
    mine = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.apply_sampling_devices(mine, 50, cores=2) == mine["XLA_FLAGS"]
    one = {"XLA_FLAGS": xla_cpu.with_defaults("")}
    assert xla_cpu.apply_sampling_devices(one, 50, cores=1) == xla_cpu.with_defaults("")
    assert xla_cpu.forced_devices("--xla_force_host_platform_device_count=8 --x=1") == 8


def test_launched_processes_reads_the_three_launchers():
    from semantica_jax.utils import parallel

    assert parallel.launched_processes({}) == 1
    assert parallel.launched_processes({"SEMANTICA_NUM_PROCESSES": "2"}) == 2
    assert parallel.launched_processes({"SLURM_NTASKS": "4"}) == 4
    assert parallel.launched_processes({"TPU_WORKER_HOSTNAMES": "a,b"}) == 2
