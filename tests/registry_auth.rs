//! What `layoutfs login` writes, as the peers read it: after `registry::auth::store`,
//! `skopeo login --get-login HOST` and `podman login --get-login HOST` print the user, both
//! through `REGISTRY_AUTH_FILE` and through `DOCKER_CONFIG` (docker's `config.json`, including
//! Docker Hub's `https://index.docker.io/v1/` key), also when podman's own file held an older
//! login for the host; after `erase`, skopeo says not logged in.
//! Neither needs a registry: `--get-login` only reads the files. skopeo and podman must be
//! installed (scripts/setup); a missing one fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use layoutfs::registry::auth::{self, Places, Source};

const HOST: &str = "127.0.0.1:5000";

/// Which variable tells the peers where the credentials are.
#[derive(Debug, Clone, Copy)]
enum Via {
    AuthFile,
    DockerConfig,
}

/// A home for the peers and the library: every place they read inside one temporary directory,
/// and the environment that names those places (nothing from the caller's).
struct Sandbox {
    dir: tempfile::TempDir,
    via: Via,
}

impl Sandbox {
    fn new(via: Via) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "run", "config"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Sandbox { dir, via }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The places as `Places::from_env` would read them from `env()`.
    fn places(&self) -> Places {
        Places {
            auth_file: matches!(self.via, Via::AuthFile).then(|| self.path("auth.json")),
            runtime_auth: Some(self.path("run/containers/auth.json")),
            config_auth: Some(self.path("config/containers/auth.json")),
            docker_dir: Some(match self.via {
                Via::AuthFile => self.path("home/.docker"),
                Via::DockerConfig => self.path("docker"),
            }),
            helper_path: None,
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_CONFIG_HOME", self.path("config"));
        match self.via {
            Via::AuthFile => cmd.env("REGISTRY_AUTH_FILE", self.path("auth.json")),
            Via::DockerConfig => cmd.env("DOCKER_CONFIG", self.path("docker")),
        };
    }

    fn skopeo_get_login(&self, host: &str) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.args(["login", "--get-login", host]);
        self.run(cmd)
    }

    /// podman with its storage and runtime files in the sandbox too.
    fn podman_get_login(&self, host: &str) -> Output {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.path("podman/root"))
            .arg("--runroot")
            .arg(self.path("podman/runroot"))
            .arg("--tmpdir")
            .arg(self.path("podman/tmp"))
            .args(["--storage-driver", "vfs", "login", "--get-login", host]);
        self.run(cmd)
    }

    fn run(&self, mut cmd: Command) -> Output {
        self.env(&mut cmd);
        cmd.output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup to install the peers)"))
    }
}

/// The user a `--get-login` run printed, failing the test if it failed.
fn logged_in_as(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn written_file(source: &Source) -> &Path {
    match source {
        Source::File(p) => p,
        other => panic!("expected a file, got {other}"),
    }
}

#[test]
fn skopeo_and_podman_find_what_login_wrote() {
    for via in [Via::AuthFile, Via::DockerConfig] {
        let sb = Sandbox::new(via);
        let places = sb.places();
        // podman's default file holds an older login for the host, which is read first.
        let runtime = sb.path("run/containers/auth.json");
        fs::create_dir_all(runtime.parent().unwrap()).unwrap();
        let old = r#"{"auths": {"127.0.0.1:5000": {"auth": "b2xkOm9sZA=="}}}"#; // old:old
        fs::write(&runtime, old).unwrap();
        let stored = auth::store(&places, HOST, "alice", "secret").unwrap();
        let wrote = stored.to;
        let expected_file = match via {
            Via::AuthFile => sb.path("auth.json"),
            Via::DockerConfig => sb.path("docker/config.json"),
        };
        assert_eq!(written_file(&wrote), expected_file, "{via:?}");
        // With REGISTRY_AUTH_FILE nothing else is read, so nothing else is touched.
        match via {
            Via::AuthFile => {
                assert_eq!(stored.replaced, [], "{via:?}");
                assert_eq!(fs::read_to_string(&runtime).unwrap(), old);
            }
            Via::DockerConfig => assert_eq!(stored.replaced, [Source::File(runtime)], "{via:?}"),
        }
        auth::store(&places, "docker.io", "hubuser", "pw").unwrap();

        assert_eq!(
            logged_in_as("skopeo", sb.skopeo_get_login(HOST)),
            "alice",
            "{via:?}"
        );
        assert_eq!(
            logged_in_as("skopeo", sb.skopeo_get_login("docker.io")),
            "hubuser",
            "{via:?}"
        );
        assert_eq!(
            logged_in_as("podman", sb.podman_get_login(HOST)),
            "alice",
            "{via:?}"
        );

        let removed = auth::erase(&places, HOST).unwrap();
        assert_eq!(removed, [Source::File(expected_file)], "{via:?}");
        let out = sb.skopeo_get_login(HOST);
        assert!(
            !out.status.success(),
            "{via:?}: still logged in after erase"
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("not logged into"), "{via:?}: {said}");
        // The other registry's entry is kept.
        assert_eq!(
            logged_in_as("skopeo", sb.skopeo_get_login("docker.io")),
            "hubuser",
            "{via:?}"
        );
    }
}

#[test]
fn lookup_reads_what_the_peers_read() {
    // A docker config as `docker login` leaves it, read by the library and by skopeo alike.
    let sb = Sandbox::new(Via::DockerConfig);
    let encoded = "aHVidXNlcjpwdw=="; // base64("hubuser:pw")
    fs::create_dir_all(sb.path("docker")).unwrap();
    fs::write(
        sb.path("docker/config.json"),
        format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{encoded}"}}}}}}"#),
    )
    .unwrap();
    let (cred, from) = auth::lookup(&sb.places(), "docker.io").unwrap().unwrap();
    assert_eq!(
        cred,
        auth::Credential::Basic {
            user: "hubuser".into(),
            password: "pw".into()
        }
    );
    assert_eq!(from, Source::File(sb.path("docker/config.json")));
    assert_eq!(
        logged_in_as("skopeo", sb.skopeo_get_login("docker.io")),
        "hubuser"
    );
}
