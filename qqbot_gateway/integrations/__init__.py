"""Integrations with other frameworks; each one imports its framework, so import only the one
you use (``qqbot_gateway.integrations.hermes`` needs the ``hermes`` extra: ``pip install
'.[hermes]'`` in a checkout, or the git URL with ``[hermes]``; the package is not on PyPI)."""
