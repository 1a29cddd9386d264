"""Pydantic models shared by every unit: commands, events, API payloads, bus messages.

This package imports nothing of ours; the published OpenAPI and AsyncAPI
documents are generated from these models.
"""
