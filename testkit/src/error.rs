use std::path::PathBuf;

/// Why a daemon, a token or a service could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spawning {}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("conveyor printed no 'conveyor listening on' line within {secs} s; log tail:\n{log}")]
    NotListening { secs: u64, log: String },
    #[error("conveyor exited before listening; log tail:\n{log}")]
    Exited { log: String },
    #[error("conveyor never became ready (/ready 200 with a partition) within {secs} s; log tail:\n{log}")]
    NotReady { secs: u64, log: String },
    #[error("conveyor did not exit within {secs} s of SIGTERM; log tail:\n{log}")]
    NoExit { secs: u64, log: String },
    #[error("{0} must be set for real backends (eval \"$(scripts/services.sh env)\")")]
    MissingEnv(&'static str),
    #[error("request to {uri}")]
    Http {
        uri: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("signing a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}
