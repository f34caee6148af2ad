"""Durable state: the store interface (``base``) and its SQLite implementation (``sqlite``)."""

from gateway.store.base import Store, StoreError, StoreTx

__all__ = ["Store", "StoreError", "StoreTx"]
