"""Storage back-ends: one module per store, all implementing the API in ``_api``."""
