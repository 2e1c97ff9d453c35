"""The strategy table (memory/plan.py) and hybrid's stall trigger."""

from __future__ import annotations

from wanmig.memory.migration import MigrationProgress
from wanmig.memory.plan import StallDetector, TlsSettings, near_convergence_bytes, plan_from
from wanmig.model import Measurements, Targets, migration_settings

M = Measurements(ram_bytes=512 << 20, nonzero_bytes=200 << 20, compress_ratio=2.0,
                 dirty_rate_bytes_s=5e6, link_rate_bit_s=100e6, rtt_ms=50.0)


def _plan(strategy: str, m: Measurements = M, **kw):
    return plan_from(migration_settings(strategy, m, Targets()), **kw)


def test_precopy_is_qemus_defaults_plus_the_rollback_point() -> None:
    plan = _plan("precopy")
    assert plan.capabilities == {"events", "pause-before-switchover"}
    assert plan.parameters == {"max-bandwidth": 128 << 20, "downtime-limit": 300}
    assert plan.postcopy == "never" and plan.dest_capabilities == {"events"}


def test_tuned_on_kvm_sets_multifd_on_both_sides() -> None:
    plan = _plan("precopy-tuned", M.model_copy(update={"accel": "kvm"}))
    assert {"multifd", "auto-converge"} <= plan.capabilities
    assert plan.dest_capabilities == {"events", "multifd"}
    assert plan.dest_parameters == {k: v for k, v in plan.parameters.items()
                                    if k.startswith("multifd-")}
    assert plan.parameters["multifd-compression"] == "zstd"


def test_tuned_under_tcg_uses_one_multifd_channel() -> None:
    plan = _plan("precopy-tuned")  # accel tcg
    assert {"multifd", "auto-converge"} <= plan.capabilities
    assert plan.parameters["multifd-channels"] == 1
    assert plan.parameters["multifd-compression"] == "zstd"
    assert not any(k.startswith(("compress", "xbzrle")) for k in plan.parameters)
    assert plan.dest_parameters["multifd-channels"] == 1
    # however many a per-stream limit would want
    lossy = M.model_copy(update={"loss_pct": 1.0, "rtt_ms": 150.0})
    assert _plan("precopy-tuned", lossy).parameters["multifd-channels"] == 1
    assert _plan("precopy-tuned", lossy.model_copy(update={"accel": "kvm"})
                 ).parameters["multifd-channels"] > 1


def test_postcopy_plans_never_combine_with_multifd() -> None:
    for strategy in ("postcopy", "hybrid"):
        plan = _plan(strategy)
        assert {"postcopy-ram", "postcopy-preempt"} <= plan.dest_capabilities
        assert "multifd" not in plan.capabilities
        assert not any(k.startswith("multifd") for k in plan.parameters)
    assert _plan("postcopy").postcopy == "immediate"
    assert _plan("hybrid").postcopy == "on-stall"
    no_preempt = M.model_copy(update={"postcopy_preempt": False})
    assert "postcopy-preempt" not in _plan("postcopy", no_preempt).dest_capabilities


def test_tls_names_the_credentials_on_both_sides() -> None:
    plan = _plan("postcopy", tls=TlsSettings(hostname="172.30.0.2"))
    assert plan.parameters["tls-creds"] == plan.dest_parameters["tls-creds"] == "wanmig-tls"
    assert plan.parameters["tls-hostname"] == "172.30.0.2"
    assert "tls-hostname" not in plan.dest_parameters
    # the destination lets in only the source its authz-simple object names
    assert plan.dest_parameters["tls-authz"] == "wanmig-tls-authz"
    assert "tls-authz" not in plan.parameters
    assert plan.to_dict()["tls"] is True


def test_progress_row_is_what_the_trace_keeps() -> None:
    info = {"status": "active", "cpu-throttle-percentage": 86,
            "ram": {"transferred": 123456789, "remaining": 4096 * 300, "total": 512 << 20,
                    "mbps": 95.1, "dirty-sync-count": 7, "dirty-pages-rate": 1200}}
    p = MigrationProgress.from_query(info, 1234.56)
    assert p.row == (1234.6, 7, 4096 * 300, 123456789, 86)
    # before auto-converge throttles (or without it) QEMU leaves the figure out
    assert MigrationProgress.from_query({"status": "setup"}, 0.0).row == (0.0, 0, 0, 0, 0)


def test_stall_detector_fires_when_a_round_does_not_shrink() -> None:
    s = StallDetector()
    assert not s.feed(1, 500)          # first pass
    assert not s.feed(2, 100)          # second round: the first remainder
    assert not s.feed(2, 50)           # same round: ignored
    assert not s.feed(3, 40)           # shrank to 40 %: progress
    assert s.feed(4, 39)               # 97 % of the last: stalled


def test_stall_detector_quiet_while_converging() -> None:
    s = StallDetector()
    assert not any(s.feed(i, int(1000 * 0.5 ** i)) for i in range(1, 10))


def test_stall_detector_ignores_a_plateau_near_qemus_threshold() -> None:
    # an idle guest's hot set hovers at ~1.5 MiB; QEMU switches over at 1.6 MB
    near = near_convergence_bytes(12.5e6, 129)
    assert near == 2 * 12.5e6 * 0.129
    s = StallDetector(near_bytes=near)
    rounds = [(1, 100 << 20), (2, 2_400_000), (3, 1_500_000), (4, 1_450_000), (5, 1_600_000)]
    assert not any(s.feed(i, left) for i, left in rounds)
    assert s.feed(6, 9_000_000)       # far above it and not shrinking: a stall


def test_ablation_removes_only_what_the_plan_uses() -> None:
    from wanmig.memory.plan import MigrationPlan, ablate

    tuned = MigrationPlan(
        strategy="precopy-tuned",
        capabilities=frozenset({"events", "pause-before-switchover", "multifd", "auto-converge"}),
        dest_capabilities=frozenset({"events", "multifd"}),
        parameters={"max-bandwidth": 1, "multifd-channels": 1, "multifd-compression": "zstd",
                    "multifd-zstd-level": 1, "cpu-throttle-initial": 40,
                    "cpu-throttle-increment": 10, "max-cpu-throttle": 80,
                    "throttle-trigger-threshold": 50},
        dest_parameters={"multifd-channels": 1, "multifd-compression": "zstd",
                         "multifd-zstd-level": 1})
    no_ac = ablate(tuned, ["auto-converge"])
    assert "auto-converge" not in no_ac.capabilities and no_ac.ablated == ("auto-converge",)
    assert not any(k.startswith(("cpu-throttle", "max-cpu", "throttle")) for k in no_ac.parameters)
    assert no_ac.parameters["multifd-compression"] == "zstd"
    plain = ablate(tuned, ["zstd"])
    assert "multifd-compression" not in plain.parameters | plain.dest_parameters
    assert "multifd" in plain.capabilities and plain.parameters["multifd-channels"] == 1
    no_mfd = ablate(tuned, ["multifd"])
    assert "multifd" not in no_mfd.capabilities | no_mfd.dest_capabilities
    assert not any(k.startswith("multifd-") for k in no_mfd.parameters | no_mfd.dest_parameters)
    assert no_mfd.to_dict()["ablated"] == ["multifd"]
    # what the plan does not use is not claimed as ablated
    assert ablate(no_mfd, ["multifd", "zstd"]).ablated == ("multifd",)


def test_parameter_override_reaches_both_sides_where_it_must() -> None:
    from wanmig.memory.plan import MigrationPlan, override

    plan = MigrationPlan(strategy="precopy-tuned", capabilities=frozenset({"multifd"}),
                         dest_capabilities=frozenset({"multifd"}),
                         parameters={"multifd-channels": 1, "downtime-limit": 120},
                         dest_parameters={"multifd-channels": 1})
    assert override(plan, {}) is plan
    two = override(plan, {"multifd-channels": 2, "max-cpu-throttle": 99})
    assert two.parameters == {"multifd-channels": 2, "downtime-limit": 120,
                              "max-cpu-throttle": 99}
    assert two.dest_parameters == {"multifd-channels": 2}
    assert two.to_dict()["overridden"] == ["max-cpu-throttle", "multifd-channels"]


def test_notsent_limit_ablation_is_named_only_where_a_plan_caps_the_backlog() -> None:
    from wanmig.memory.plan import MigrationPlan, ablate

    def plan(strategy: str) -> MigrationPlan:
        return MigrationPlan(strategy=strategy, capabilities=frozenset({"events"}),
                             dest_capabilities=frozenset({"events"}))
    assert ablate(plan("hybrid"), ["notsent-limit"]).ablated == ("notsent-limit",)
    assert ablate(plan("precopy"), ["notsent-limit"]).ablated == ()


def test_a_paused_postcopy_resumes_on_the_port_above_the_migrations() -> None:
    from wanmig.memory.migration import QemuMigration

    migration = QemuMigration.__new__(QemuMigration)
    migration.uri = "tcp:172.16.2.2:4444"
    assert migration.recover_uri == "tcp:172.16.2.2:4445"
