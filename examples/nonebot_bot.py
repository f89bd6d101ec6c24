"""A NoneBot2 ``bot.py`` on qqbot-gateway: the one line that differs from a bot on
``nonebot-adapter-qq`` is the adapter's import (docs/nonebot.md).

Run it where NoneBot finds its configuration (``.env`` or the environment): ``DRIVER=~aiohttp``,
``QQ_BOTS='[{"id": "...", "secret": "...", "intent": {"c2c_group_at_messages": true}}]'``;
``pip install 'qqbot-gateway[nonebot]'`` first. The plugin, ``nonebot_plugins/echo.py``, is
written for the original adapter and runs unchanged.
"""

import nonebot

# before: from nonebot.adapters.qq import Adapter as QQAdapter
from qqbot_gateway.integrations.nonebot import Adapter as QQAdapter

nonebot.init()
driver = nonebot.get_driver()
driver.register_adapter(QQAdapter)
nonebot.load_plugin("nonebot_plugins.echo")

if __name__ == "__main__":
    nonebot.run()
