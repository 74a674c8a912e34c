//! Storage engine benchmark (filled in below).
fn main() {}
