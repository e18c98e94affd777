"""The k1s0 event-store operator (Kopf): EventStream reconciliation and sidecar injection."""
