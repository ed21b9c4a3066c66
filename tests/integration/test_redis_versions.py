"""Collectors import only the standard library and redis, and work with redis-py 4.2 and 8.x."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.conftest import REDIS_URL
from tests.integration.test_emitter import stream_events
from tests.libenvs import ensure_env

SCRIPT = textwrap.dedent("""
    import sys
    before = set(sys.modules)
    import collectors, collectors.emitter, collectors.events, collectors.runtime
    import redis
    foreign = sorted({m.split(".")[0] for m in set(sys.modules) - before}
                     - set(sys.stdlib_module_names) - {"collectors", "redis"})
    # redis-py's own dependencies are allowed; nothing of the dashboard's may appear.
    dashboard_deps = {"starlette", "sqlalchemy", "jinja2", "orjson", "uvicorn", "alembic", "dashboard"}
    assert not dashboard_deps & set(sys.modules), sorted(dashboard_deps & set(sys.modules))
    from collectors import CollectorConfig, get_emitter, build
    em = get_emitter(CollectorConfig.resolve(redis_url=sys.argv[1], stream=sys.argv[2], maxlen=100))
    for i in range(250):
        em.emit(build("job-succeeded", "arq", "compat", job_id=str(i), duration_ms=1.5))
    assert em.flush(10), em.stats()
    print(redis.__version__, foreign)
""")


@pytest.mark.libenv
@pytest.mark.parametrize(("env", "major"), [("redis42", "4.2"), ("redis8", "8.")])
def test_collectors_work_with_redis_py(env: str, major: str, stream_name: str) -> None:
    python = ensure_env(env) / "python"
    result = subprocess.run([str(python), "-c", SCRIPT, REDIS_URL, stream_name],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(major), result.stdout
    events = stream_events(stream_name)
    assert 100 <= len(events) <= 250  # MAXLEN ~ 100 trims whole nodes only
    assert events[-1]["job_id"] == "249"


def test_import_collectors_pulls_in_only_stdlib_and_redis() -> None:
    import sys

    code = ("import sys; b=set(sys.modules); import collectors; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules)-b} - set(sys.stdlib_module_names)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {"collectors", "redis"}, out
