//! The deterministic simulation harness. It lands with the simulation issue.
