//! The command line: one enum of subcommands whose doc comments are the help, and what each
//! subcommand does with the store. Errors come back as `Error` for `main` to print as one line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::archive::{self, ExportOptions, Plan, Source};
use crate::error::{Error, Result};
use crate::fs::{Fs, FsOptions};
use crate::fuse::{self, MountOptions};
use crate::layout::{self, Entry};
use crate::oci::{OnMissing, PlatformSpec};
use crate::progress::Progress;
use crate::reference::{RefQuery, Reference};
use crate::store::{Image, Store, STORE_ENV};

/// Environment variables that set the log filter, first one wins.
const LOG_ENV: [&str; 2] = ["LAYOUTFS_LOG", "RUST_LOG"];
/// Log filter when none is set.
const DEFAULT_LOG: &str = "warn";
/// Log filter of the mount daemon when none is set.
const DEFAULT_MOUNT_LOG: &str = "info";

/// Container images in a local content-addressed store, as OCI image layouts.
#[derive(Debug, Parser)]
#[command(name = "layoutfs", version, about)]
pub struct Cli {
    /// The store directory [default: $LAYOUTFS_STORE, /var/lib/layoutfs for root,
    /// else $XDG_DATA_HOME/layoutfs]
    #[arg(long, global = true, value_name = "DIR", env = STORE_ENV, hide_env = true)]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import images from an OCI layout directory, an OCI archive (tar, tar.gz, tar.zst) or
    /// standard input (-), and print the names registered
    Import {
        /// Repository for images named only by a tag or a digest [default: the source's base
        /// name without extension]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Layout directory, archive file, or - for standard input
        source: PathBuf,
    },
    /// Export images as a deterministic OCI archive
    Export {
        /// Output file, or - for standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Keep only this platform of each image index (os/arch[/variant])
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<PlatformSpec>,
        /// Also write Docker's manifest.json, for `docker load`
        #[arg(long)]
        docker_manifest: bool,
        /// Re-hash every blob while streaming it
        #[arg(long)]
        verify: bool,
        /// NAME:TAG, NAME@DIGEST, or a repository name meaning all its images
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
    /// List images
    #[command(alias = "ls")]
    Images {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove images (a repository name removes all its images); blobs stay until gc
    Rm {
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
    /// Mount the store: every repository as an OCI image-layout directory (runs in the
    /// foreground until unmounted, or SIGINT/SIGTERM)
    Mount {
        /// An empty directory to mount on
        mountpoint: PathBuf,
        /// Let other users see the mount (as root, or with user_allow_other in /etc/fuse.conf)
        #[arg(long, help_heading = "Mount options")]
        allow_other: bool,
        /// Mount read-only: the kernel refuses every write with EROFS
        #[arg(long, help_heading = "Mount options")]
        read_only: bool,
        /// Serve blob reads through the daemon instead of FUSE passthrough
        #[arg(long, help_heading = "Mount options")]
        no_passthrough: bool,
        /// Threads serving the kernel's requests [default: twice the cores, at least 4]
        #[arg(long, value_name = "N", help_heading = "Mount options")]
        threads: Option<std::num::NonZeroUsize>,
    },
    /// Give an image another name
    Tag {
        /// NAME:TAG or NAME@DIGEST of an existing image
        source: String,
        /// The new NAME:TAG
        target: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Sets up tracing on standard error, filtered by `LAYOUTFS_LOG` or `RUST_LOG`; without them,
/// warnings only, or also the daemon's informational lines when it mounts.
pub fn init_logging(command: &Command) {
    let default = match command {
        Command::Mount { .. } => DEFAULT_MOUNT_LOG,
        _ => DEFAULT_LOG,
    };
    let filter = LOG_ENV
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

impl Cli {
    pub fn run(self) -> Result<()> {
        let root = match self.store {
            Some(s) => s,
            None => Store::default_root()?,
        };
        let store = Store::open(&root)?;
        match self.command {
            Command::Import { name, source } => {
                let source = Source::from_arg(&source)?;
                let imported = archive::import(&store, &source, name.as_deref())?;
                tracing::info!(
                    blobs = imported.new_blobs,
                    bytes = imported.new_bytes,
                    "import done"
                );
                let mut out = std::io::stdout().lock();
                for n in &imported.names {
                    writeln!(out, "{n}").map_err(stdout_err)?;
                }
                Ok(())
            }
            Command::Export {
                output,
                platform,
                docker_manifest,
                verify,
                refs,
            } => {
                let images = resolve(&store, &refs)?;
                let entries: Vec<Entry> = images.into_iter().map(entry).collect();
                let opts = ExportOptions {
                    platform,
                    docker_manifest,
                    verify,
                };
                let plan = Plan::new(&store, &entries, &opts)?;
                let out = archive::open_output(output.as_deref())?;
                let progress = Progress::bytes("exporting", Some(plan.blob_bytes()));
                plan.write(&store, &out, verify, &progress)?;
                progress.finish();
                Ok(())
            }
            Command::Images { format } => list_images(&store, format),
            Command::Rm { refs } => {
                let names: Vec<Reference> = resolve(&store, &refs)?
                    .into_iter()
                    .map(|i| i.name)
                    .collect();
                store.records().remove(&names)?;
                let mut out = std::io::stdout().lock();
                for n in &names {
                    writeln!(out, "{n}").map_err(stdout_err)?;
                }
                Ok(())
            }
            Command::Mount {
                mountpoint,
                allow_other,
                read_only,
                no_passthrough,
                threads,
            } => {
                let options = MountOptions {
                    allow_other,
                    read_only,
                    passthrough: !no_passthrough,
                    threads: threads.map(std::num::NonZeroUsize::get),
                };
                let abandoned = crate::store::remove_abandoned(&store)?;
                if abandoned > 0 {
                    tracing::info!("removed {abandoned} ingests of processes that are gone");
                }
                let fs = Fs::new(std::sync::Arc::new(store), FsOptions { read_only });
                fuse::mount(fs, &mountpoint, &options)
            }
            Command::Tag { source, target } => {
                let src: Reference = source.parse()?;
                let dst: Reference = target.parse()?;
                let image = store
                    .records()
                    .get(&src)?
                    .ok_or_else(|| Error::NotFound(src.to_string()))?;
                store.records().put(&[(dst, image.target)])
            }
        }
    }
}

fn entry(i: Image) -> Entry {
    Entry {
        name: i.name,
        target: i.target,
    }
}

fn stdout_err(e: std::io::Error) -> Error {
    Error::Stream {
        what: "standard output".into(),
        source: e,
    }
}

/// The images named by `refs`, each once, in the order given. Every ref must match.
pub fn resolve(store: &Store, refs: &[String]) -> Result<Vec<Image>> {
    let mut out: BTreeMap<String, (usize, Image)> = BTreeMap::new();
    for (i, r) in refs.iter().enumerate() {
        let found = match r.parse::<RefQuery>()? {
            RefQuery::Image(name) => vec![store
                .records()
                .get(&name)?
                .ok_or_else(|| Error::NotFound(name.to_string()))?],
            RefQuery::Repository(repo) => {
                let v = store.records().of_repository(&repo)?;
                if v.is_empty() {
                    return Err(Error::NotFound(repo));
                }
                v
            }
        };
        for img in found {
            out.entry(img.name.to_string()).or_insert((i, img));
        }
    }
    let mut v: Vec<(usize, Image)> = out.into_values().collect();
    v.sort_by_key(|(i, _)| *i);
    Ok(v.into_iter().map(|(_, img)| img).collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageRow {
    name: String,
    digest: String,
    media_type: String,
    size: u64,
    created: String,
    updated: String,
}

fn list_images(store: &Store, format: Format) -> Result<()> {
    let mut rows = Vec::new();
    for img in store.records().list()? {
        let e = entry(img.clone());
        let size = layout::blobs(store, std::slice::from_ref(&e), OnMissing::Skip)?
            .values()
            .map(|d| d.size)
            .sum();
        rows.push(ImageRow {
            name: img.name.to_string(),
            digest: img.target.digest.to_string(),
            media_type: img.target.media_type.clone(),
            size,
            created: rfc3339(img.created),
            updated: rfc3339(img.updated),
        });
    }
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &rows)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            writeln!(out).map_err(stdout_err)?;
        }
        Format::Table => {
            let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
            writeln!(
                out,
                "{:w$}  {:71}  {:>10}  CREATED",
                "NAME", "DIGEST", "SIZE"
            )
            .map_err(stdout_err)?;
            for r in &rows {
                writeln!(
                    out,
                    "{:w$}  {:71}  {:>10}  {}",
                    r.name,
                    r.digest,
                    human(r.size),
                    r.created
                )
                .map_err(stdout_err)?;
            }
        }
    }
    Ok(())
}

/// Sizes in binary units, as `du -h` and `ctr` show them.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_print() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_795_527_689_000, "2026-11-24T13:41:29Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(rfc3339(ms), want);
        }
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
