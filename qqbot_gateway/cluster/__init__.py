"""Cluster mode, on with ``QQBOT_REDIS_URL``: shard leases with fencing, the Redis session store,
shared dedupe, the event stream and ``qqbot-gateway worker``. Needs the ``redis`` extra
(``pip install 'qqbot-gateway[redis]'``); nothing here is imported without it."""
