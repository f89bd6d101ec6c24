"""``python -m tests.nonebot_app.bot``: a NoneBot2 bot.py as a user writes it.

``NB_ADAPTER=gateway`` registers ``qqbot_gateway.integrations.nonebot.Adapter`` (the one line a
user changes), ``NB_ADAPTER=original`` the adapter of ``nonebot-adapter-qq``; everything else
(``DRIVER``, ``QQ_BOTS``, ``QQ_API_BASE``, ``QQ_AUTH_BASE``) is NoneBot's own configuration from
the environment. ``NB_PLUGIN`` picks the plugin: ``echo`` (tests.nonebot_app.echo, a matcher
written for the original adapter that replies) or ``noop`` (tests.nonebot_app.noop).
"""

from __future__ import annotations

import os

import nonebot

if os.environ.get("NB_ADAPTER", "gateway") == "original":
    from nonebot.adapters.qq import Adapter as QQAdapter
else:
    from qqbot_gateway.integrations.nonebot import Adapter as QQAdapter

nonebot.init()
driver = nonebot.get_driver()
driver.register_adapter(QQAdapter)
nonebot.load_plugin(f"tests.nonebot_app.{os.environ.get('NB_PLUGIN', 'echo')}")

if __name__ == "__main__":
    nonebot.run()
