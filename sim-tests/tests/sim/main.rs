//! The simulation's tests, one binary: the checker against a brute-force
//! model, the smoke test of the real node code on simulated hosts, and
//! the seeds (each run in a fresh process of this binary).

mod checker_model;
mod seeds;
mod smoke;
