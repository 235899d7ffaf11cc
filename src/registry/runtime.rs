//! The one asynchronous runtime of the program. `oci-client` and `reqwest` are async; the rest
//! of layoutfs is threads and blocking calls. The registry module keeps a multi-threaded tokio
//! runtime (started on first use, two workers, named `layoutfs-net`) and gives everything else
//! `block_on`: any ordinary thread may block on a future, several at once (the pull's copy
//! workers each wait on their own stream). No tokio type crosses `registry`'s boundary.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Worker threads of the runtime: the network work is waiting, not computing.
const WORKERS: usize = 2;

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    RUNTIME
        .get_or_init(|| {
            // rustls takes its cryptography from the process default: ring, installed once.
            let _ = rustls::crypto::ring::default_provider().install_default();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .thread_name("layoutfs-net")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Registry(format!("starting the network runtime: {e}")))
}

/// Runs `f` to completion from an ordinary (non-runtime) thread.
pub fn block_on<F: Future>(f: F) -> Result<F::Output> {
    Ok(runtime()?.handle().block_on(f))
}

/// Starts `f` on the runtime and returns at once; `block_on` the handle to wait for it.
pub fn spawn<F>(f: F) -> Result<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(f))
}
