"""Plugins for tests/ci/test_bad_input.py: one backend with a long name that never runs anywhere
(so --require fails on every machine) and one that always runs on the CPU."""
from moecheck.backends import Availability, Backend, Capability, register

LONG = "never_available_backend_with_a_long_name"  # longer than the 26 characters the table once assumed


class Never(Backend):
    def availability(self) -> Availability:
        return Availability(False, "test plugin: never available")


register(Never(name=LONG, capability=Capability(formats=frozenset({"bf16"}))))
register(Backend(name="a_plugin_backend_that_is_available_on_cpu", capability=Capability(
    formats=frozenset({"bf16"}), devices=frozenset({"cpu"}))))
