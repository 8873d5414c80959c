//! alaska-gateway (being written).
fn main() {}
