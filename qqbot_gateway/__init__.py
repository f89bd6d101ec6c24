"""qqbot-gateway: a QQ Bot gateway adapter that never dies silently."""

__version__ = "0.1.0"
