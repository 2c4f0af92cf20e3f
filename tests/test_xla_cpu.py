"""utils.xla_cpu: project defaults added to XLA_FLAGS, the user's own setting wins."""

from semantica_jax.utils import xla_cpu


def test_defaults_are_appended_once_and_user_flags_win():
    flag = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert xla_cpu.with_defaults("") == flag
    both = xla_cpu.with_defaults("--xla_force_host_platform_device_count=8")
    assert both == f"--xla_force_host_platform_device_count=8 {flag}"
    assert xla_cpu.with_defaults(both) == both  # idempotent
    mine = "--xla_cpu_experimental_ynn_fusion_type=-dot"
    assert xla_cpu.with_defaults(mine) == mine  # the user's value is kept
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_cpu.apply_defaults(env) == f"--xla_dump_to=/tmp/x {flag}" == env["XLA_FLAGS"]
