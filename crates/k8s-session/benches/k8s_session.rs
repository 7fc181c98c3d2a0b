//! Benchmark: a list call through a pooled session vs a client built per call (being written).

fn main() {}
