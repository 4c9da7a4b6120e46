//! Network namespaces, TAP/veth plumbing and process helpers for the bridge tests.
