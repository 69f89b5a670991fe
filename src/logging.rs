//! Logging of every boshy process (the multi-tool `boshy` and the agent's own binary): to
//! stderr, filtered by `RUST_LOG`, coloured only on a terminal.

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // hickory logs every DNS query at info; that would flood the agent's log.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,hickory_server::server=warn")
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
