"""Reload planning: the diff between two configs."""

from daemon.config import parse_config
from daemon.runtime.reload import plan_reload

BASE = {
    "sources": {"a": {"type": "ingest"}, "b": {"type": "http_poll", "url": "http://127.0.0.1:1/x"}},
    "aggregations": [{"name": "x", "window": {"type": "tumbling", "size": "1m"}, "metrics": {"n": "count"}}],
}


def test_same_config_plans_nothing():
    """Reloading an unchanged file changes nothing."""
    assert plan_reload(parse_config(BASE), parse_config(BASE)).empty


def test_added_removed_and_changed_parts():
    """Sources and aggregations are diffed by name; a changed value restarts only that part."""
    new = {
        "sources": {"a": {"type": "ingest", "ack": "durable"}, "c": {"type": "ingest"}},
        "aggregations": [
            {"name": "x", "window": {"type": "tumbling", "size": "1m"}, "metrics": {"n": "count"}},
            {"name": "y", "window": {"type": "tumbling", "size": "1m"}, "metrics": {"n": "count"}},
        ],
        "http": {"listen": "127.0.0.1:9999"},
    }
    plan = plan_reload(parse_config(BASE), parse_config(new))
    assert plan.sources_added == ("c",) and plan.sources_removed == ("b",) and plan.sources_changed == ("a",)
    assert plan.aggregations_added == ("y",) and plan.aggregations_removed == () and plan.aggregations_changed == ()
    assert plan.needs_restart == ("http",)
