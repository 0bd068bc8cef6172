//! A throwaway PostgreSQL server for tests that restart it or change its limits: a new
//! cluster (`initdb`) on a free local port, removed when dropped. `initdb` is found on the
//! `PATH`, under `/usr/lib/postgresql/*/bin`, or in `TENANCY_TEST_PG_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// PostgreSQL refuses to run as root: commands then run as `postgres`.
    as_postgres: bool,
}

fn find_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("TENANCY_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(initdb) = on_path
        && let Some(dir) = initdb.parent()
    {
        return Some(dir.to_path_buf());
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

impl Cluster {
    /// Starts a new cluster; `None` (with a message) where PostgreSQL's server programs
    /// are not installed, which fails the test under CI (`CI` set).
    pub fn start(settings: &[&str]) -> Option<Self> {
        Self::start_with(settings, None)
    }

    /// A cluster that accepts TCP connections over TLS only, with the certificate `cert`
    /// and its key `key` (PEM files): `postgres` without a password, every other role by
    /// SCRAM (so with channel binding). Its Unix socket ([`Cluster::socket_url`]) takes
    /// plain connections for the tests' own set-up.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Self> {
        Self::start_with(&[], Some((cert, key)))
    }

    fn start_with(settings: &[&str], tls: Option<(&Path, &Path)>) -> Option<Self> {
        let Some(bin) = find_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "initdb not found: install the PostgreSQL server or set TENANCY_TEST_PG_BIN"
            );
            eprintln!(
                "skipped: initdb not found (install the PostgreSQL server or set TENANCY_TEST_PG_BIN)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("tenancy-test-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let cluster = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        );
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            cluster.dir.display()
        );
        for setting in settings {
            options.push_str(&format!(" -c {setting}"));
        }
        if let Some((cert, key)) = tls {
            let dir = &cluster.dir;
            std::fs::copy(cert, dir.join("server.crt")).unwrap();
            std::fs::copy(key, dir.join("server.key")).unwrap();
            std::fs::write(
                dir.join("hba.conf"),
                "local all all trust\nhostssl all postgres 127.0.0.1/32 trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
            for file in ["server.crt", "server.key", "hba.conf"] {
                cluster.give_to_server(&dir.join(file));
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key -c hba_file={0}/hba.conf",
                dir.display()
            ));
        }
        std::fs::write(cluster.dir.join("options"), &options).unwrap();
        cluster.pg_ctl("start");
        Some(cluster)
    }

    /// The superuser's URL of the maintenance database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The superuser's URL of the maintenance database, through the Unix socket.
    pub fn socket_url(&self) -> String {
        let dir = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes `file` the server's own, readable by it alone (PostgreSQL refuses a key
    /// others can read).
    fn give_to_server(&self, file: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_postgres {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(file)
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres {}", file.display());
        }
    }

    /// Stops the server (fast: clients are disconnected) and starts it again; returns
    /// when it accepts connections.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }

    /// Stops every process of the server (SIGSTOP) for `how_long` without closing
    /// anything: what a network black hole or a stalled failover looks like to a client.
    /// [`Cluster::thaw`] (or dropping the cluster) ends it sooner.
    pub fn freeze_for(&self, how_long: std::time::Duration) {
        let pids = self.pids();
        signal("STOP", &pids);
        std::thread::spawn(move || {
            std::thread::sleep(how_long);
            signal("CONT", &pids);
        });
    }

    pub fn thaw(&self) {
        signal("CONT", &self.pids());
    }

    /// The postmaster's process id and its children's.
    fn pids(&self) -> Vec<String> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster = pid_file.lines().next().unwrap().trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        pids
    }

    fn pg_ctl(&self, action: &str) {
        let options = std::fs::read_to_string(self.dir.join("options")).unwrap();
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                action.as_ref(),
            ],
        );
    }

    /// `program` of the server's binaries, run as `postgres` when this process is root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let output = self.command(program).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Sends `signal` (`STOP`, `CONT`) to the processes `pids`, passing over one that has
/// exited since it was listed (a backend whose client had just left).
fn signal(signal: &str, pids: &[String]) {
    let kill = |signal: &str, pid: &str| {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    for pid in pids {
        assert!(kill(signal, pid) || !kill("0", pid), "kill -{signal} {pid}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            let _ = std::panic::catch_unwind(|| self.thaw());
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
