"""NoneBot plugins of examples/nonebot_bot.py."""
