"""Talks to QQ: the gateway session, its driver, the supervisor, auth and the OpenAPI client.

This package imports no telemetry library; it emits lifecycle events (``events``) instead.
"""
