"""diff(old Config, new Config) → ReloadPlan: what SIGHUP adds, removes, restarts and keeps (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config import Config

# Sections that a reload cannot change in place (the listener, the store, the clocks of the pipeline).
RESTART_ONLY = ("http", "storage", "pipeline", "recommendations")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    sources_added: tuple[str, ...] = ()
    sources_removed: tuple[str, ...] = ()
    sources_changed: tuple[str, ...] = ()
    aggregations_added: tuple[str, ...] = ()
    aggregations_removed: tuple[str, ...] = ()
    aggregations_changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()     # sections that changed but only apply after a restart
    log_level_changed: bool = False

    @property
    def empty(self) -> bool:
        return not any((self.sources_added, self.sources_removed, self.sources_changed, self.aggregations_added,
                        self.aggregations_removed, self.aggregations_changed, self.needs_restart,
                        self.log_level_changed))

    def summary(self) -> dict[str, list[str]]:
        """The diff as the log line shows it (only non-empty parts)."""
        out = {
            "sources_added": list(self.sources_added), "sources_removed": list(self.sources_removed),
            "sources_changed": list(self.sources_changed), "aggregations_added": list(self.aggregations_added),
            "aggregations_removed": list(self.aggregations_removed),
            "aggregations_changed": list(self.aggregations_changed), "needs_restart": list(self.needs_restart),
        }
        return {k: v for k, v in out.items() if v}


def _diff(old: dict[str, object], new: dict[str, object]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(n for n in new if n not in old)
    removed = tuple(n for n in old if n not in new)
    changed = tuple(n for n in new if n in old and new[n] != old[n])
    return added, removed, changed


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What must change to go from `old` to `new`; unchanged sources and aggregations are kept as they run."""
    s_add, s_rem, s_chg = _diff({s.name: s for s in old.sources}, {s.name: s for s in new.sources})
    a_add, a_rem, a_chg = _diff({a.name: a for a in old.aggregations}, {a.name: a for a in new.aggregations})
    restart = tuple(section for section in RESTART_ONLY if getattr(old, section) != getattr(new, section))
    return ReloadPlan(s_add, s_rem, s_chg, a_add, a_rem, a_chg, restart, old.log_level != new.log_level)
