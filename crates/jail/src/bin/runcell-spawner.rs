//! A standalone spawner, used by this crate's integration tests and benchmarks. The `runcell`
//! binary serves the same role itself (`runcell __spawner`), so installations need one binary.
//! The spawner starts zygotes by executing its own binary with `__zygote`.

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == runcell_jail::ZYGOTE_ARG)
    {
        std::process::exit(runcell_jail::zygote_main());
    }
    std::process::exit(runcell_jail::spawner_main());
}
