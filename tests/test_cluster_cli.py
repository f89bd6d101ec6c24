"""``qqbot-gateway run`` with ``QQBOT_REDIS_URL``: a bad or unreachable Redis at start is one
line on stderr and exit status 2, with the password never shown."""

from __future__ import annotations

import pytest

from .test_cli import APP_ID, SECRET, clean_env, error_lines, free_port, run_cli

pytestmark = pytest.mark.slow


def _env(url: str) -> dict[str, str]:
    return clean_env(
        QQBOT_APP_ID=APP_ID,
        QQBOT_CLIENT_SECRET=SECRET,
        QQBOT_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        QQBOT_REDIS_URL=url,
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis://:hunter2@127.0.0.1:{free_port()}/0", "cannot use Redis (QQBOT_REDIS_URL)"),
        ("http://:hunter2@example/0", "QQBOT_REDIS_URL"),
    ],
)
def test_unreachable_or_wrong_redis_url_is_one_line_and_exit_2(url: str, says: str) -> None:
    result = run_cli(["run"], _env(url))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
