//! The control-plane HTTP API: /v1/registration, /healthz, /metrics.
