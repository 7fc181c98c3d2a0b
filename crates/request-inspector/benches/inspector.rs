//! Scenario `inspector` (written next).

fn main() {}
