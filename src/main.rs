fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(wal_e::run())
}
