//! A PostgreSQL or MariaDB server of the test's own, for tests that stop and start the
//! database under a running node (`db_restart.rs`): its data directory in a temp dir, a port
//! of its own on 127.0.0.1, its unix socket in the temp dir. The shared servers of this
//! machine (5432, 3306) are never touched.
//!
//! The binaries are found by build.rs (`MESSAGING_TEST_*`); without them the tests that need
//! them are compiled as ignored (`server_test!`'s `own_postgres` and `own_mariadb`). Run as
//! root, PostgreSQL (which refuses root) runs as the `postgres` user, and MariaDB with
//! `--user=root`.
//!
//! Dropped, the server is stopped (killed if it does not stop) and the temp dir removed, also
//! when the test failed.
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long starting or stopping a server may take on a loaded machine.
const SERVER_WAIT: Duration = Duration::from_secs(60);
/// The database the service gets.
const DB_NAME: &str = "messaging";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

pub struct OwnServer {
    pub kind: Kind,
    pub port: u16,
    /// The temp dir: `data/`, the socket, `server.log`.
    dir: PathBuf,
    /// The running server (PostgreSQL's postmaster, `mariadbd`); `None` while stopped.
    child: Option<Child>,
    /// Root runs PostgreSQL's tools as this (uid, gid).
    run_as: Option<(u32, u32)>,
}

fn bin(var: Option<&'static str>, name: &str) -> PathBuf {
    match var {
        Some(v) => PathBuf::from(v),
        None => panic!("{name} was not found when the tests were built (build.rs)"),
    }
}

fn pg_tool(tool: &str) -> PathBuf {
    bin(
        option_env!("MESSAGING_TEST_PG_BIN"),
        "PostgreSQL's bin directory",
    )
    .join(tool)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The (uid, gid) of a user of `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// A free port below the kernel's ephemeral range: nothing that binds port 0 or connects out
/// (the other tests, the service's own reconnects) can take it while the server is stopped.
fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let from = 15000.min(low.saturating_sub(1000));
    let span = u64::from(low - from);
    let seed = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(messaging::ids::new_id().as_bytes());
        h.finish()
    };
    (0..span)
        .map(|i| from + ((seed + i) % span) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Runs a short command (an installer, `pg_ctl stop`) to its end; panics with its output if it
/// fails.
async fn run(mut cmd: Command, what: &str) {
    cmd.stdin(Stdio::null());
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnServer {
    /// A new server with an empty database `messaging`, running.
    pub async fn start(kind: Kind) -> Self {
        let dir = std::env::temp_dir().join(format!("messaging-own-{}", messaging::ids::new_id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let run_as = match kind {
            Kind::Postgres if is_root() => Some(
                user_ids("postgres")
                    .expect("run as root, PostgreSQL needs a `postgres` user to run as"),
            ),
            _ => None,
        };
        // From here on, Drop cleans up.
        let mut server = Self {
            kind,
            port: free_port(),
            dir,
            child: None,
            run_as,
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid)).expect("chown temp dir");
        }
        server.install().await;
        server.resume().await;
        let admin = sea_orm::Database::connect(server.admin_url())
            .await
            .expect("admin connection");
        use sea_orm::ConnectionTrait;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {DB_NAME}"))
            .await
            .expect("create database");
        admin.close().await.expect("close");
        server
    }

    /// The service's database on this server.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/{DB_NAME}", self.port),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{}/{DB_NAME}", self.port),
        }
    }

    /// A database of the server's own, for the test's administration (it survives what the
    /// test does to the service's connections only if the test spares it).
    pub fn admin_url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{}/mysql", self.port),
        }
    }

    pub fn db_name(&self) -> &'static str {
        DB_NAME
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The end of the server's log, for a failure message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn as_owner(&self, mut cmd: Command) -> Command {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    async fn install(&self) {
        let data = self.data();
        match self.kind {
            Kind::Postgres => {
                let mut cmd = Command::new(pg_tool("initdb"));
                cmd.arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]);
                run(self.as_owner(cmd), "initdb").await;
            }
            Kind::Mariadb => {
                let mut cmd = Command::new(bin(
                    option_env!("MESSAGING_TEST_MARIADB_INSTALL_DB"),
                    "mariadb-install-db",
                ));
                // --no-defaults first: the machine's my.cnf names the shared server's
                // datadir, port and socket.
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
                if is_root() {
                    cmd.arg("--user=root");
                }
                run(cmd, "mariadb-install-db").await;
            }
        }
    }

    /// Starts the server on its data directory and port, and waits until it accepts
    /// connections. Used once by `start`, and again after `stop`.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("server log");
        let err = log.try_clone().expect("server log");
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut cmd = Command::new(pg_tool("postgres"));
                cmd.arg("-D").arg(self.data()).arg("-k").arg(&self.dir);
                cmd.args(["-p", &self.port.to_string()]);
                for setting in [
                    "listen_addresses=127.0.0.1",
                    "fsync=off",
                    "shared_buffers=16MB",
                    "max_connections=60",
                ] {
                    cmd.args(["-c", setting]);
                }
                self.as_owner(cmd)
            }
            Kind::Mariadb => {
                let mut cmd = Command::new(bin(option_env!("MESSAGING_TEST_MARIADBD"), "mariadbd"));
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data().display()))
                    .arg(format!("--port={}", self.port))
                    .arg(format!("--socket={}", self.dir.join("sock").display()))
                    .arg(format!("--pid-file={}", self.dir.join("pid").display()))
                    .args([
                        "--bind-address=127.0.0.1",
                        "--skip-log-bin",
                        "--innodb-buffer-pool-size=32M",
                        "--innodb-flush-log-at-trx-commit=0",
                    ]);
                if is_root() {
                    cmd.arg("--user=root");
                }
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", self.kind));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + SERVER_WAIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "{:?} exited at start ({status}):\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            if self.accepts().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} not ready within {SERVER_WAIT:?}:\n{}",
                self.kind,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server answers a connection of the admin.
    async fn accepts(&self) -> bool {
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut cmd = Command::new(pg_tool("pg_isready"));
                cmd.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
                cmd
            }
            Kind::Mariadb => self.mariadb_admin("ping"),
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tokio::process::Command::from(cmd)
            .status()
            .await
            .is_ok_and(|s| s.success())
    }

    fn mariadb_admin(&self, what: &str) -> Command {
        let mut cmd = Command::new(bin(
            option_env!("MESSAGING_TEST_MARIADB_ADMIN"),
            "mariadb-admin",
        ));
        cmd.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
            .arg(format!("--port={}", self.port))
            .arg(what);
        cmd
    }

    /// Stops the server the way an operator does, and waits for its process to end:
    /// PostgreSQL's fast shutdown (`pg_ctl stop -m fast`: every backend is terminated with
    /// 57P01), MariaDB's `shutdown` (its connections are killed).
    pub async fn stop(&mut self) {
        let cmd = match self.kind {
            Kind::Postgres => {
                let mut cmd = Command::new(pg_tool("pg_ctl"));
                cmd.arg("stop")
                    .arg("-D")
                    .arg(self.data())
                    .args(["-m", "fast", "-w", "-t", "60"]);
                self.as_owner(cmd)
            }
            Kind::Mariadb => self.mariadb_admin("shutdown"),
        };
        run(cmd, "stop the server").await;
        let deadline = tokio::time::Instant::now() + SERVER_WAIT;
        let mut child = self.child.take().expect("the server is running");
        loop {
            if child.try_wait().expect("wait for the server").is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?} still running {SERVER_WAIT:?} after its shutdown:\n{}",
                self.kind,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.kind == Kind::Postgres {
                // An immediate shutdown ends the backends too (a killed postmaster leaves
                // them to notice by themselves).
                let mut cmd = Command::new(pg_tool("pg_ctl"));
                cmd.arg("stop")
                    .arg("-D")
                    .arg(self.data())
                    .args(["-m", "immediate", "-w", "-t", "10"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let _ = self.as_owner(cmd).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for OwnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} on 127.0.0.1:{} in {}",
            self.kind,
            self.port,
            Path::display(&self.dir)
        )
    }
}
