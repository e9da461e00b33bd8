//! A standalone spawner, used by this crate's integration tests and benchmarks. The `runcell`
//! binary serves the same role itself (`runcell __spawner`), so installations need one binary.

fn main() {
    std::process::exit(runcell_jail::spawner_main());
}
