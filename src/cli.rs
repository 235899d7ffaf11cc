//! The command line: one enum of subcommands whose doc comments are the help, and what each
//! subcommand does with the store. Errors come back as `Error` for `main` to print as one line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::archive::export::{convert_to_oci, ArchiveFormat};
use crate::archive::import::ImportOptions;
use crate::archive::{self, ExportOptions, Plan, Source};
use crate::content::{Catalog, Change, Content};
use crate::error::StoreProblem;
use crate::error::{Error, Result};
use crate::fs::{Fs, FsOptions};
use crate::fuse::{self, MountOptions};
use crate::layout::Entry;
use crate::oci::PlatformSpec;
use crate::progress::Progress;
use crate::reference::{RefQuery, Reference};
use crate::registry::commands;
use crate::registry::{Platforms, PullOptions};
use crate::store::check;
use crate::store::fsck::{self, FsckOptions, FsckReport};
use crate::store::gc::{self, GcOptions, GcReport};
use crate::store::{Access, Image, Store, STORE_ENV};

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
    /// Import images from an OCI layout directory, an image archive (an OCI archive, a `docker
    /// save` / `podman save` / skopeo docker-archive; tar, tar.gz, tar.zst) or standard input
    /// (-), and print the names registered
    Import {
        /// Repository for images named only by a tag or a digest [default: the source's base
        /// name without extension]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Convert docker schema 2 manifests, manifest lists and configs to OCI media types
        /// (new manifest digests; configs and layers unchanged)
        #[arg(long)]
        oci: bool,
        /// Layout directory, archive file, or - for standard input
        source: PathBuf,
    },
    /// Export images as a deterministic OCI or docker archive
    Export {
        /// Output file, or - for standard output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// oci: an OCI image layout; docker: what docker 25+ saves (the OCI layout plus
        /// manifest.json and repositories, names as docker writes them), for docker and podman load
        #[arg(long, value_enum, default_value_t = ArchiveKind::Oci)]
        format: ArchiveKind,
        /// Keep only this platform of each image index (os/arch[/variant]); it is also the
        /// platform manifest.json describes [default there: this host's]
        #[arg(long, value_name = "PLATFORM")]
        platform: Option<PlatformSpec>,
        /// Also write Docker's manifest.json into an OCI archive, for `docker load`
        #[arg(long)]
        docker_manifest: bool,
        /// Convert docker schema 2 manifests, lists and configs to OCI media types first (new
        /// manifest digests, configs and layers unchanged)
        #[arg(long)]
        oci: bool,
        /// Re-hash every blob while streaming it
        #[arg(long)]
        verify: bool,
        /// NAME:TAG, NAME@DIGEST, or a repository name meaning all its images
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
    /// List images (`layoutfs repositories` also lists the repositories with no image)
    #[command(alias = "ls")]
    Images {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List repositories and how many images each has, those kept with none too
    ///
    /// A repository is kept when it was made in the mount (a directory made there, or an
    /// index.json written there listing nothing): it stays, with no image, when its last image
    /// is removed, until `layoutfs rm REPOSITORY`.
    #[command(alias = "repos")]
    Repositories {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove images (a repository name removes all its images, and the repository itself when
    /// it is kept); blobs stay until gc
    ///
    /// Prints the names of the images removed, then of the kept repositories removed. A
    /// repository kept with no image is removed by its name alone.
    Rm {
        /// NAME:TAG, NAME@DIGEST, or a repository name
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
        /// Hash every blob on its first open in this mount, even one the store recorded as
        /// verified and unchanged since (by default those are served without hashing)
        #[arg(long, help_heading = "Mount options")]
        verify_reads: bool,
    },
    /// Remove the blobs no image needs (nor an untagged signature or SBOM of one, nor an
    /// import or mount in progress), and abandoned ingests; print what was freed
    Gc {
        /// Print what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
        /// Run even though the store's image records were lost (meta.db was missing or empty
        /// while blobs were stored): every blob no record reaches is removed
        #[arg(long)]
        force: bool,
        /// Age after which the ingests and leases of processes that are gone are removed
        /// (e.g. 30s, 10m, 2h, 1d)
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
    /// Re-hash every blob, check every image's blobs, report what is corrupt or missing and
    /// the images it breaks; exit 1 when anything is wrong
    Fsck {
        /// Move corrupt blobs to quarantine/ so that a re-import restores them
        #[arg(long)]
        repair: bool,
    },
    /// Pull images from a registry (HOST[:PORT]/REPO[:TAG|@DIGEST]; a name without a host is
    /// on docker.io, as docker reads it) and print the names stored
    Pull {
        /// Pull this platform of an index [default: this machine's]
        #[arg(
            long,
            value_name = "OS/ARCH[/VARIANT]",
            conflicts_with = "all_platforms"
        )]
        platform: Option<PlatformSpec>,
        /// Pull every platform of an index
        #[arg(long)]
        all_platforms: bool,
        /// Store under this name (NAME:TAG, or a repository taking the reference's tag)
        /// [default: the full reference, e.g. docker.io/library/busybox:latest]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Also pull the OCI 1.1 referrers (signatures, SBOMs) of each manifest
        #[arg(long)]
        referrers: bool,
        /// Talk plain HTTP to the registry (a loopback registry without TLS needs no flag)
        #[arg(long)]
        plain_http: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
    },
    /// Push an image of the store to a registry
    Push {
        /// Talk plain HTTP to the registry (a loopback registry without TLS needs no flag)
        #[arg(long)]
        plain_http: bool,
        /// Also push the store's untagged images whose subject is a pushed manifest
        #[arg(long)]
        referrers: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// NAME:TAG, NAME@DIGEST, or a repository name meaning all its images
        #[arg(value_name = "REF")]
        source: String,
        /// HOST[:PORT]/REPO[:TAG] [default: REF's own name, which must start with a host]
        #[arg(value_name = "DEST")]
        dest: Option<String>,
    },
    /// Check a credential with a registry and keep it where docker, podman and skopeo find it
    Login {
        #[arg(short = 'u', long, value_name = "USER")]
        username: Option<String>,
        /// Read the password from standard input (one line)
        #[arg(long)]
        password_stdin: bool,
        /// Talk plain HTTP to the registry
        #[arg(long)]
        plain_http: bool,
        /// HOST[:PORT]
        registry: String,
    },
    /// Forget the credential kept for a registry
    Logout {
        /// HOST[:PORT]
        registry: String,
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

/// The layout of an exported archive (`export --format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveKind {
    Oci,
    Docker,
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
    /// What the command does with the store: only reading works on a read-only filesystem.
    fn access(&self) -> Access {
        match self.command {
            Command::Images { .. }
            | Command::Repositories { .. }
            | Command::Export { .. }
            | Command::Fsck { repair: false }
            | Command::Gc { dry_run: true, .. }
            | Command::Mount {
                read_only: true, ..
            } => Access::Read,
            _ => Access::Write,
        }
    }

    pub fn run(self) -> Result<()> {
        // Credentials are no business of the store.
        match &self.command {
            Command::Login {
                username,
                password_stdin,
                plain_http,
                registry,
            } => {
                return commands::login(registry, username.as_deref(), *password_stdin, *plain_http)
            }
            Command::Logout { registry } => return commands::logout(registry),
            _ => {}
        }
        let store = self.open_store()?;
        warn_if_adopted(&store, &self.command);
        run_in(store, self.command)
    }

    /// Opens the store `--store` names, or the default one.
    fn open_store(&self) -> Result<Store> {
        let root = match &self.store {
            Some(s) => s.clone(),
            None => Store::default_root()?,
        };
        Store::open_with(&root, self.access()).map_err(|e| match e {
            Error::Store {
                path,
                problem: StoreProblem::NotADirectory,
            } if path == root => {
                Error::Invalid(format!("--store {}: not a directory", root.display()))
            }
            e => e,
        })
    }
}

/// Runs `command` on `store`: one function per subcommand (the local ones here).
fn run_in(store: Store, command: Command) -> Result<()> {
    match command {
        Command::Import { name, oci, source } => import(
            &store,
            &ImportOptions {
                name: name.as_deref(),
                oci,
            },
            &source,
        ),
        Command::Export {
            output,
            format,
            platform,
            docker_manifest,
            oci,
            verify,
            refs,
        } => {
            let opts = ExportOptions {
                platform,
                docker_manifest,
                verify,
            };
            export(&store, &refs, output.as_deref(), &opts, format.into(), oci)
        }
        Command::Images { format } => list_images(&store, format),
        Command::Repositories { format } => list_repositories(store.records(), format),
        Command::Rm { refs } => remove(store.records(), &refs),
        Command::Gc {
            dry_run,
            force,
            grace,
        } => collect(&store, &GcOptions { dry_run, grace }, force),
        Command::Fsck { repair } => print_fsck(&fsck::fsck(
            &store,
            &FsckOptions {
                repair,
                threads: None,
            },
        )?),
        Command::Tag { source, target } => tag(store.records(), &source, &target),
        other => serve(store, other),
    }
}

/// Runs the commands that serve the store (mount) or talk to registries (pull, push).
fn serve(store: Store, command: Command) -> Result<()> {
    match command {
        Command::Mount {
            mountpoint,
            allow_other,
            read_only,
            no_passthrough,
            threads,
            verify_reads,
        } => {
            let options = MountOptions {
                allow_other,
                read_only,
                passthrough: !no_passthrough,
                threads: threads.map(std::num::NonZeroUsize::get),
            };
            mount(store, &mountpoint, &options, verify_reads)
        }
        Command::Pull {
            platform,
            all_platforms,
            name,
            referrers,
            plain_http,
            format,
            refs,
        } => {
            let opts = PullOptions {
                platforms: platforms(platform, all_platforms),
                name,
                referrers,
            };
            commands::pull(&store, &refs, &opts, plain_http, format == Format::Json)
        }
        Command::Push {
            plain_http,
            referrers,
            format,
            source,
            dest,
        } => {
            let images = resolve(store.records(), std::slice::from_ref(&source))?;
            let json = format == Format::Json;
            commands::push(
                &store,
                &images,
                dest.as_deref(),
                referrers,
                plain_http,
                json,
            )
        }
        // Handled before the store is opened.
        Command::Login { .. } | Command::Logout { .. } => Ok(()),
        // Handled by `run_in`, which sends only the others here.
        Command::Import { .. }
        | Command::Export { .. }
        | Command::Images { .. }
        | Command::Repositories { .. }
        | Command::Rm { .. }
        | Command::Gc { .. }
        | Command::Fsck { .. }
        | Command::Tag { .. } => unreachable!("run_in runs the local commands"),
    }
}

impl From<ArchiveKind> for ArchiveFormat {
    fn from(kind: ArchiveKind) -> ArchiveFormat {
        match kind {
            ArchiveKind::Oci => ArchiveFormat::Oci,
            ArchiveKind::Docker => ArchiveFormat::Docker,
        }
    }
}

/// Which platforms `pull --platform P` / `--all-platforms` ask for.
fn platforms(platform: Option<PlatformSpec>, all: bool) -> Platforms {
    match (platform, all) {
        (_, true) => Platforms::All,
        (Some(p), false) => Platforms::Only(p),
        (None, false) => Platforms::This,
    }
}

/// `layoutfs gc`: collects (`--force`: in spite of lost records) and prints what it did.
fn collect(store: &Store, opts: &GcOptions, force: bool) -> Result<()> {
    let report = if force {
        gc::gc_forced(store, opts)?
    } else {
        gc::gc(store, opts)?
    };
    print_gc(&report, opts.dry_run)
}

/// `layoutfs import`: prints the names registered.
fn import(store: &Store, opts: &ImportOptions<'_>, source: &std::path::Path) -> Result<()> {
    let source = Source::from_arg(source)?;
    let imported = archive::import::import_with(store, &source, opts)?;
    if store.db_replaced() {
        return Err(Error::Invalid(format!(
            "{}: deleted or replaced during the import: the images were registered \
             in the old database; import again",
            store.root().join(crate::store::DB_FILE).display()
        )));
    }
    tracing::info!(
        blobs = imported.new_blobs,
        bytes = imported.new_bytes,
        "import done"
    );
    print_names(&imported.names)
}

/// `layoutfs export`: every blob is held and checked before the first byte is written.
fn export(
    store: &dyn Content,
    refs: &[String],
    output: Option<&std::path::Path>,
    opts: &ExportOptions,
    format: ArchiveFormat,
    oci: bool,
) -> Result<()> {
    let images = resolve(store.catalog(), refs)?;
    let mut entries: Vec<Entry> = images.into_iter().map(Entry::from).collect();
    let lease = store.lease()?;
    if oci {
        entries = convert_to_oci(store, store, &*lease, &entries)?;
    }
    let plan = Plan::with_format(store, &entries, opts, format)?;
    plan.hold(store, &*lease)?;
    let out = archive::open_output(output)?;
    let progress = Progress::bytes("exporting", Some(plan.blob_bytes()));
    plan.write(store, &out, opts.verify, &progress)?;
    progress.finish();
    drop(lease);
    Ok(())
}

/// `layoutfs rm`: removes the images named and the repositories named, in one change, and
/// prints the names of the images, then of the kept repositories, it removed. Blobs stay.
fn remove(catalog: &dyn Catalog, refs: &[String]) -> Result<()> {
    let kept: BTreeSet<String> = catalog.repositories()?.into_iter().collect();
    let (images, repositories) = resolve_in(catalog, refs, &kept)?;
    let names: Vec<Reference> = images.into_iter().map(|i| i.name).collect();
    // Every repository named goes, even one kept since it was resolved.
    catalog.apply(&Change {
        remove: &names,
        forget: &repositories,
        ..Change::default()
    })?;
    print_names(&names)?;
    let mut out = std::io::stdout().lock();
    for repo in repositories.iter().filter(|r| kept.contains(*r)) {
        writeln!(out, "{repo}").map_err(stdout_err)?;
    }
    Ok(())
}

/// `layoutfs mount`: serves until unmounted.
fn mount(
    store: Store,
    mountpoint: &std::path::Path,
    options: &MountOptions,
    verify_reads: bool,
) -> Result<()> {
    let abandoned = if store.is_read_only() {
        0
    } else {
        crate::store::remove_abandoned(&store)?
    };
    if abandoned > 0 {
        tracing::info!("removed {abandoned} ingests of processes that are gone");
    }
    let fs_options = FsOptions {
        read_only: options.read_only,
        verify_reads,
    };
    let fs = Fs::new(std::sync::Arc::new(store), fs_options);
    fuse::mount(fs, mountpoint, options)
}

/// `layoutfs tag SOURCE TARGET`.
fn tag(catalog: &dyn Catalog, source: &str, target: &str) -> Result<()> {
    let src: Reference = source.parse()?;
    let dst: Reference = target.parse()?;
    let image = catalog
        .get(&src)?
        .ok_or_else(|| Error::NotFound(src.to_string()))?;
    catalog.update(&[(dst, image.target)], &[])
}

fn print_names(names: &[Reference]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for n in names {
        writeln!(out, "{n}").map_err(stdout_err)?;
    }
    Ok(())
}

/// Says on standard error, for the commands that read records, that the store's records were
/// lost and what to do (gc refuses on its own, with its own message).
fn warn_if_adopted(store: &Store, command: &Command) {
    let Some(a) = store.adopted() else {
        return;
    };
    if matches!(
        command,
        Command::Images { .. }
            | Command::Repositories { .. }
            | Command::Export { .. }
            | Command::Mount { .. }
    ) {
        eprintln!(
            "layoutfs: warning: {}: no image records, but the store held {} blobs when the \
             database was created (it was missing or empty); gc refuses until layoutfs fsck \
             --repair or gc --force",
            store.root().join(crate::store::DB_FILE).display(),
            a.blobs
        );
    }
}

fn print_gc(r: &GcReport, dry_run: bool) -> Result<()> {
    for (path, why) in &r.left_alone {
        eprintln!("layoutfs: gc: left {} alone: {why}", path.display());
    }
    if let (Some(a), true) = (r.adopted, dry_run) {
        eprintln!(
            "layoutfs: gc: warning: the store's image records were lost ({} blobs when its \
             database was created): gc refuses without --force",
            a.blobs
        );
    }
    let mut out = std::io::stdout().lock();
    if dry_run {
        for (d, size) in &r.blobs {
            writeln!(out, "{d}  {}", human(*size)).map_err(stdout_err)?;
        }
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    writeln!(
        out,
        "{verb} {} ({}) and {} ({}); kept {} ({} held by leases)",
        counted(r.blobs.len(), "blob"),
        human(r.bytes()),
        counted(r.ingests, "abandoned ingest"),
        human(r.ingest_bytes),
        counted(r.kept, "blob"),
        r.leased,
    )
    .map_err(stdout_err)?;
    if r.partial > 0 {
        writeln!(
            out,
            "kept {} ({}) for a pull to resume",
            counted(r.partial, "partial ingest"),
            human(r.partial_bytes),
        )
        .map_err(stdout_err)?;
    }
    Ok(())
}

/// `n noun`, the noun in the plural unless n is 1.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn print_fsck(r: &FsckReport) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for p in &r.problems {
        writeln!(out, "{p}").map_err(stdout_err)?;
    }
    for (d, path) in &r.quarantined {
        writeln!(out, "quarantined {d} -> {}", path.display()).map_err(stdout_err)?;
    }
    for name in &r.recovered {
        writeln!(out, "recovered {name}").map_err(stdout_err)?;
    }
    writeln!(
        out,
        "checked {} ({}) and {}: {}, {} broken; {}",
        counted(r.blobs, "blob"),
        human(r.bytes),
        counted(r.images, "image"),
        counted(r.problems.len(), "problem"),
        counted(r.broken_images, "image"),
        match r.unreferenced {
            Some((n, bytes)) if lost_records(r) => format!(
                "gc would refuse: the image records were lost ({} ({}) would go with --force)",
                counted(n, "unreferenced blob"),
                human(bytes)
            ),
            Some((n, bytes)) => format!(
                "{} ({}) for gc",
                counted(n, "unreferenced blob"),
                human(bytes)
            ),
            None => "gc would refuse until the broken images are restored or removed".to_owned(),
        },
    )
    .map_err(stdout_err)?;
    if r.is_clean() {
        Ok(())
    } else {
        let corrupt_left = r.quarantined.is_empty()
            && r.problems
                .iter()
                .any(|p| matches!(p, fsck::Problem::Corrupt { .. }));
        let hint = if lost_records(r) {
            "; --repair registers the images it finds as lost-found@<digest>"
        } else if corrupt_left {
            "; --repair moves corrupt blobs aside, a re-import restores them"
        } else if r.broken_images > 0 {
            "; re-import the broken images to restore their blobs"
        } else {
            ""
        };
        Err(Error::Invalid(format!(
            "fsck: {}{hint}",
            counted(r.problems.len(), "problem")
        )))
    }
}

/// Whether fsck found the store's records lost and did not recover them.
fn lost_records(r: &FsckReport) -> bool {
    r.recovered.is_empty()
        && r.problems
            .iter()
            .any(|p| matches!(p, fsck::Problem::NoRecords { .. }))
}

/// A duration as `--grace` takes it: a number with s, m, h or d (seconds without a unit).
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// An error writing standard output.
pub(crate) fn stdout_err(e: std::io::Error) -> Error {
    Error::Stream {
        what: "standard output".into(),
        source: e,
    }
}

/// The images named by `refs`, each once, in the order given. Every ref must match an image.
pub fn resolve(catalog: &dyn Catalog, refs: &[String]) -> Result<Vec<Image>> {
    Ok(resolve_in(catalog, refs, &BTreeSet::new())?.0)
}

/// The images named by `refs`, each once, in the order given, and the repositories named,
/// each once, in the order given. Every ref must match an image, or name a repository of
/// `kept`.
fn resolve_in(
    catalog: &dyn Catalog,
    refs: &[String],
    kept: &BTreeSet<String>,
) -> Result<(Vec<Image>, Vec<String>)> {
    let mut out: BTreeMap<String, (usize, Image)> = BTreeMap::new();
    let mut repositories = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let found = match r.parse::<RefQuery>()? {
            RefQuery::Image(name) => vec![catalog
                .get(&name)?
                .ok_or_else(|| Error::NotFound(name.to_string()))?],
            RefQuery::Repository(repo) => {
                let v = catalog.of_repository(&repo)?;
                if v.is_empty() && !kept.contains(&repo) {
                    return Err(Error::NotFound(repo));
                }
                if !repositories.contains(&repo) {
                    repositories.push(repo);
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
    Ok((v.into_iter().map(|(_, img)| img).collect(), repositories))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageRow {
    name: String,
    digest: String,
    media_type: String,
    size: u64,
    /// Every blob of the image is in the store with its size, its manifests readable.
    complete: bool,
    /// Blobs the image needs that the store lacks.
    missing: usize,
    created: String,
    updated: String,
}

fn list_images(store: &Store, format: Format) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // The width of the name column, known before the first row is printed.
    let w = match format {
        Format::Table => check::longest_name(store)?.max(4),
        Format::Json => 0,
    };
    if format == Format::Table {
        writeln!(
            out,
            "{:w$}  {:71}  {:>10}  {:10}  CREATED",
            "NAME", "DIGEST", "SIZE", "COMPLETE"
        )
        .map_err(stdout_err)?;
    }
    // One record at a time; a target named several times in a row is walked once, the layers
    // images share are looked up once: (size, complete, missing).
    let src = check::LeafSizes::new(store);
    let mut walked: check::WalkCache<(u64, bool, usize)> = check::WalkCache::default();
    let mut json = JsonArray::default();
    check::each_image(store, |img| {
        let (size, complete, missing) = *walked.get_or(&img.target, || {
            let c = check::walk(&src, &img.target);
            (
                c.present.values().map(|d| d.size).sum(),
                c.is_complete(),
                c.missing.len(),
            )
        });
        let r = ImageRow {
            name: img.name.to_string(),
            digest: img.target.digest.to_string(),
            media_type: img.target.media_type.clone(),
            size,
            complete,
            missing,
            created: rfc3339(img.created),
            updated: rfc3339(img.updated),
        };
        match format {
            Format::Json => json.push(&mut out, &r),
            Format::Table => {
                let complete = match (r.complete, r.missing) {
                    (true, _) => "yes".to_owned(),
                    (false, 0) => "damaged".to_owned(),
                    (false, n) => format!("{n} missing"),
                };
                writeln!(
                    out,
                    "{:w$}  {:71}  {:>10}  {complete:10}  {}",
                    r.name,
                    r.digest,
                    human(r.size),
                    r.created
                )
                .map_err(stdout_err)
            }
        }
    })?;
    if format == Format::Json {
        json.finish(&mut out)?;
    }
    out.flush().map_err(stdout_err)
}

/// A JSON array written one element at a time, as `print_json` writes a whole one.
#[derive(Default)]
struct JsonArray {
    started: bool,
}

impl JsonArray {
    fn push(&mut self, out: &mut impl Write, row: &impl Serialize) -> Result<()> {
        let v = serde_json::to_string_pretty(row).map_err(|e| Error::Invalid(e.to_string()))?;
        let sep = if self.started { ",\n" } else { "[\n" };
        self.started = true;
        write!(out, "{sep}").map_err(stdout_err)?;
        for (i, line) in v.lines().enumerate() {
            let nl = if i == 0 { "" } else { "\n" };
            write!(out, "{nl}  {line}").map_err(stdout_err)?;
        }
        Ok(())
    }

    fn finish(self, out: &mut impl Write) -> Result<()> {
        let end = if self.started { "\n]\n" } else { "[]\n" };
        write!(out, "{end}").map_err(stdout_err)
    }
}

/// Writes `rows` as pretty JSON and a newline.
pub(crate) fn print_json(out: &mut impl Write, rows: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, rows).map_err(|e| Error::Invalid(e.to_string()))?;
    writeln!(out).map_err(stdout_err)
}

#[derive(Serialize)]
struct RepositoryRow {
    name: String,
    images: usize,
    /// Kept whether it has images or not: it stays when its last image is removed.
    kept: bool,
}

/// `layoutfs repositories`: every repository with images or kept, sorted by name.
fn list_repositories(catalog: &dyn Catalog, format: Format) -> Result<()> {
    let mut repos: BTreeMap<String, RepositoryRow> = BTreeMap::new();
    let row = |name: &str| RepositoryRow {
        name: name.to_owned(),
        images: 0,
        kept: false,
    };
    for img in catalog.list()? {
        let repo = img.name.repository();
        repos
            .entry(repo.to_owned())
            .or_insert_with(|| row(repo))
            .images += 1;
    }
    for repo in catalog.repositories()? {
        repos.entry(repo.clone()).or_insert_with(|| row(&repo)).kept = true;
    }
    let rows: Vec<RepositoryRow> = repos.into_values().collect();
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => print_json(&mut out, &rows)?,
        Format::Table => {
            let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(10);
            writeln!(out, "{:w$}  {:>6}  KEPT", "REPOSITORY", "IMAGES").map_err(stdout_err)?;
            for r in &rows {
                let kept = if r.kept { "yes" } else { "no" };
                writeln!(out, "{:w$}  {:>6}  {kept}", r.name, r.images).map_err(stdout_err)?;
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
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("0"), Ok(0));
        assert_eq!(d("30s"), Ok(30));
        assert_eq!(d("10m"), Ok(600));
        assert_eq!(d("24h"), Ok(86_400));
        assert_eq!(d("2d"), Ok(172_800));
        for bad in ["", "h", "1w", "-1s", "1.5h"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }
}
