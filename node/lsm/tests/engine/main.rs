//! The storage engine's integration tests, one binary: each module is one
//! behaviour of the engine, driven through its public API on real files
//! (or on `cairn-io`'s simulated disk where a crash is the point).

mod basics;
mod corruption;
mod crash;
mod many_levels;
mod model;
