"""Integrations with other frameworks; each module imports its framework, so import only the one
you use (``qqbot_gateway.integrations.hermes`` needs ``pip install 'qqbot-gateway[hermes]'``)."""
