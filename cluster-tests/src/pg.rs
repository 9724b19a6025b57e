//! A real PostgreSQL cluster for tests: initdb, start, SQL over TCP, standbys, teardown on drop.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::{as_pg_user, chown_to_pg_user, free_port, pg_bin, run, tail, unique_subdir, wait_until};

/// How to initialise and configure a cluster.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Extra `postgresql.conf` lines as (key, raw right-hand side), e.g. `("archive_command", "'cp %p /a/%f'")`.
    pub conf: Vec<(String, String)>,
    /// WAL segment size in MiB (initdb `--wal-segsize`); PostgreSQL's 16 when `None`.
    pub wal_segsize_mb: Option<u32>,
    /// When set, TCP connections need scram-sha-256 with this password for user `postgres`; else trust.
    pub password: Option<String>,
    /// Enable data checksums (initdb `-k`).
    pub data_checksums: bool,
    /// More addresses to listen on besides 127.0.0.1, each `ADDRESS/PREFIX` (e.g. `10.231.7.1/30`):
    /// clients from that network are let in as from loopback.
    pub listen: Vec<String>,
}

/// A running (until stopped or dropped) PostgreSQL cluster listening on 127.0.0.1.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    data_dir: PathBuf,
    port: u16,
    log_path: PathBuf,
    password: Option<String>,
    running: bool,
}

/// Quotes `s` as a postgresql.conf string value: `'...'` with embedded quotes doubled.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes `s` as an SQL string literal.
pub fn sql_quote(s: &str) -> String {
    conf_quote(s)
}

impl PgCluster {
    /// Initialises a cluster in `base/pgN/data` (as the PostgreSQL OS user) and starts it.
    pub fn start(base: &Path, opts: PgOptions) -> Result<PgCluster> {
        let dir = unique_subdir(base, "pg")?;
        chown_to_pg_user(&dir)?;
        let data_dir = dir.join("data");
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb.arg("-D").arg(&data_dir).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        let pwfile = dir.join("pwfile");
        if let Some(password) = &opts.password {
            fs::write(&pwfile, format!("{password}\n")).with_context(|| format!("writing {}", pwfile.display()))?;
            chown_to_pg_user(&pwfile)?;
            initdb.arg("--auth-host=scram-sha-256").arg("--pwfile").arg(&pwfile);
        } else {
            initdb.arg("--auth-host=trust");
        }
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        if opts.data_checksums {
            initdb.arg("-k");
        }
        let initialised = run(as_pg_user(&mut initdb)?, "initdb");
        let _ = fs::remove_file(&pwfile);
        initialised?;

        let mut cluster = PgCluster {
            log_path: dir.join("postgresql.log"),
            port: free_port()?,
            data_dir,
            dir,
            password: opts.password.clone(),
            running: false,
        };
        let method = if opts.password.is_some() { "scram-sha-256" } else { "trust" };
        let mut hba = format!(
            "local all all trust\nlocal replication all trust\n\
             host all all 127.0.0.1/32 {method}\nhost replication all 127.0.0.1/32 {method}\n"
        );
        let mut listen = "127.0.0.1".to_string();
        for network in &opts.listen {
            let Some((addr, _)) = network.split_once('/') else { bail!("listen address {network:?} lacks a /PREFIX") };
            listen.push_str(&format!(",{addr}"));
            hba.push_str(&format!("host all all {network} {method}\nhost replication all {network} {method}\n"));
        }
        // Truncating the existing file keeps its owner (the PostgreSQL OS user).
        fs::write(cluster.data_dir.join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
        let mut conf = format!(
            "\n# cluster-tests\nlisten_addresses = {}\nport = {}\nunix_socket_directories = {}\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nfsync = on\n\
             logging_collector = off\nlog_line_prefix = '%m [%p] %q%u@%d '\n",
            conf_quote(&listen),
            cluster.port,
            conf_quote(&cluster.dir.to_string_lossy())
        );
        for (key, value) in &opts.conf {
            conf.push_str(&format!("{key} = {value}\n"));
        }
        cluster.append_conf(&conf)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Starts PostgreSQL on a data directory made elsewhere (a restored
    /// backup) in `dir/data`: the directories in `owned` (and `dir`) are given
    /// to the PostgreSQL OS user, this cluster's port, socket and log settings
    /// are appended to postgresql.conf, then `extra_conf`.
    pub fn adopt(dir: &Path, owned: &[&Path], extra_conf: &str) -> Result<PgCluster> {
        let data_dir = dir.join("data");
        if crate::util::is_root() {
            let user = crate::util::pg_os_user()?;
            for p in std::iter::once(dir).chain(owned.iter().copied()) {
                let mut chown = Command::new("chown");
                chown.arg("-R").arg(format!("{}:{}", user.uid, user.gid)).arg(p);
                run(&mut chown, "chown -R")?;
            }
        }
        let mut cluster = PgCluster {
            log_path: dir.join("postgresql.log"),
            port: free_port()?,
            data_dir,
            dir: dir.to_path_buf(),
            password: None,
            running: false,
        };
        let conf = format!(
            "\n# cluster-tests (adopted)\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = {}\n\
             logging_collector = off\n{extra_conf}\n",
            cluster.port,
            conf_quote(&cluster.dir.to_string_lossy())
        );
        cluster.append_conf(&conf)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket (also holds the server log).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The password of user `postgres` over TCP, if one was configured.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// libpq connection string over TCP, without the password.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// The whole server log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// Runs `sql` with psql over TCP as user `postgres` (unaligned, tuples only); returns trimmed stdout.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-f", "-"]);
        self.client_env(&mut cmd);
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("running psql")?;
        let mut stdin = child.stdin.take().context("psql stdin")?;
        let script = sql.to_owned();
        // A separate writer so a large result cannot block psql while we are still writing.
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().context("waiting for psql")?;
        let written = writer.join().map_err(|_| anyhow::anyhow!("psql stdin writer panicked"))?;
        if !out.status.success() {
            bail!(
                "psql on port {} failed ({}): {}\nSQL: {sql}",
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        written.context("writing SQL to psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `pgbench -i -s scale -q` against database postgres.
    pub fn pgbench_init(&self, scale: u32) -> Result<String> {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()])
    }

    /// Runs pgbench with `args` against database postgres over TCP; returns stdout.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(pg_bin("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p", &self.port.to_string()]).args(args).arg("postgres");
        self.client_env(&mut cmd);
        run(&mut cmd, "pgbench")
    }

    /// `pgbench -n -c clients -T secs` (the tables of [`PgCluster::pgbench_init`]): its
    /// transactions per second.
    pub fn pgbench_tps(&self, clients: u32, secs: u32) -> Result<f64> {
        let out =
            self.pgbench(&["-n", "-c", &clients.to_string(), "-j", &clients.to_string(), "-T", &secs.to_string()])?;
        out.lines()
            .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no tps line in pgbench's output:\n{out}"))
    }

    /// The best TPS of up to three [`PgCluster::pgbench_tps`] runs, stopping at the first that
    /// reaches `floor`: a throughput comparison that a passing load on the machine does not
    /// fail, while a mode ten times slower still does.
    pub fn pgbench_tps_reaching(&self, floor: f64, clients: u32, secs: u32) -> Result<f64> {
        let mut best = 0.0f64;
        for _ in 0..3 {
            best = best.max(self.pgbench_tps(clients, secs)?);
            if best >= floor {
                break;
            }
        }
        Ok(best)
    }

    /// The cluster's system identifier (pg_control_system()).
    pub fn system_identifier(&self) -> Result<u64> {
        let out = self.psql("SELECT system_identifier FROM pg_control_system()")?;
        let id: i64 = out.parse().with_context(|| format!("parsing system identifier {out:?}"))?;
        Ok(id as u64)
    }

    /// The current WAL write position, as `X/Y`.
    pub fn current_lsn(&self) -> Result<String> {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// Writes a WAL record then switches WAL; returns the name of the segment that was closed.
    /// The record makes sure a new segment is closed even when nothing was written since the last switch.
    pub fn switch_wal(&self) -> Result<String> {
        let out = self.psql(
            "SELECT FROM pg_logical_emit_message(false, 'cluster-tests', 'switch');\n\
             SELECT pg_walfile_name(pg_switch_wal());",
        )?;
        let name = out.lines().last().unwrap_or_default().trim().to_string();
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("pg_switch_wal on port {} returned {out:?}, not a WAL file name", self.port);
        }
        Ok(name)
    }

    /// Appends `key = raw_value` to postgresql.conf and, when running, reloads and waits until the server has.
    /// Settings that need a restart (wal_level, archive_mode...) take effect after [`PgCluster::restart`].
    pub fn set_conf(&self, key: &str, raw_value: &str) -> Result<()> {
        self.append_conf(&format!("{key} = {raw_value}\n"))?;
        if !self.running {
            return Ok(());
        }
        // New backends fork from the postmaster, so their load time shows when it has reloaded.
        let loaded = self.psql("SELECT pg_conf_load_time()")?;
        self.psql("SELECT pg_reload_conf()")?;
        let check = format!("SELECT pg_conf_load_time() > {}::timestamptz", sql_quote(&loaded));
        wait_until(Duration::from_secs(10), &format!("a reload after setting {key}"), || {
            self.psql(&check).is_ok_and(|v| v == "t")
        })
        .map_err(|e| self.with_log(e))
    }

    /// Restarts the server (fast shutdown); also starts a stopped one.
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.arg("-l").arg(&self.log_path).args(["-w", "-t", "60", "-m", "fast", "restart"]);
        // Set first, so that drop still tries to stop whatever runs if the restart fails.
        self.running = true;
        run(as_pg_user(&mut cmd)?, "pg_ctl restart").map_err(|e| self.with_log(e))?;
        Ok(())
    }

    /// Stops the server with a fast shutdown.
    pub fn stop(&mut self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run(as_pg_user(&mut cmd)?, "pg_ctl stop").map_err(|e| self.with_log(e))?;
        self.running = false;
        Ok(())
    }

    /// Stops PostgreSQL as a crash would (`pg_ctl -m immediate`): no shutdown
    /// checkpoint, nothing more sent to clients or standbys.
    pub fn crash(&mut self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "60", "-m", "immediate", "stop"]);
        run(as_pg_user(&mut cmd)?, "pg_ctl stop -m immediate").map_err(|e| self.with_log(e))?;
        self.running = false;
        Ok(())
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "60", "promote"]);
        run(as_pg_user(&mut cmd)?, "pg_ctl promote").map_err(|e| self.with_log(e))?;
        Ok(())
    }

    /// Takes a pg_basebackup of this cluster into `base/pgN/data` and starts it as a standby.
    /// `restore_command` is the raw shell command; with `stream` the standby also streams from this
    /// cluster (and the backup streams its WAL), otherwise WAL past the backup comes only through
    /// `restore_command`, retried every second. The copied postgresql.conf keeps this cluster's
    /// other settings (archive_mode=on archives nothing until a promotion).
    pub fn make_standby(&self, base: &Path, restore_command: &str, stream: bool) -> Result<PgCluster> {
        let dir = unique_subdir(base, "pg")?;
        chown_to_pg_user(&dir)?;
        let data_dir = dir.join("data");
        let mut cmd = Command::new(pg_bin("pg_basebackup"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c", "fast", "-N", "-p", &self.port.to_string()])
            .args(["-X", if stream { "stream" } else { "fetch" }]);
        self.client_env(&mut cmd);
        run(as_pg_user(&mut cmd)?, "pg_basebackup").map_err(|e| self.with_log(e))?;

        let mut standby = PgCluster {
            log_path: dir.join("postgresql.log"),
            port: free_port()?,
            data_dir,
            dir,
            password: self.password.clone(),
            running: false,
        };
        let mut conf = format!(
            "\n# cluster-tests standby\nport = {}\nunix_socket_directories = {}\nhot_standby = on\n\
             wal_retrieve_retry_interval = '1s'\nrestore_command = {}\n",
            standby.port,
            conf_quote(&standby.dir.to_string_lossy()),
            conf_quote(restore_command)
        );
        if stream {
            let mut primary = format!("{} application_name={}", self.conninfo(), standby.name());
            if let Some(password) = &self.password {
                primary.push_str(&format!(" password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'")));
            }
            conf.push_str(&format!("primary_conninfo = {}\n", conf_quote(&primary)));
        }
        standby.append_conf(&conf)?;
        let signal = standby.data_dir.join("standby.signal");
        fs::write(&signal, "").with_context(|| format!("writing {}", signal.display()))?;
        chown_to_pg_user(&signal)?;
        standby.start_server()?;
        Ok(standby)
    }

    /// Waits until this standby has replayed WAL up to `lsn` (`X/Y`).
    pub fn wait_replay(&self, lsn: &str, timeout: Duration) -> Result<()> {
        let check = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= {}::pg_lsn, false)", sql_quote(lsn));
        let waited = wait_until(timeout, &format!("replay of {lsn} on port {}", self.port), || {
            self.psql(&check).is_ok_and(|v| v == "t")
        });
        waited.map_err(|e| {
            let at = self.psql("SELECT pg_last_wal_replay_lsn()").unwrap_or_else(|e| format!("unknown ({e})"));
            self.with_log(e.context(format!("replayed up to {at}")))
        })
    }

    fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pg".into())
    }

    fn client_env(&self, cmd: &mut Command) {
        cmd.env_remove("PGSERVICE").env_remove("PGOPTIONS").env_remove("PGPASSFILE");
        match &self.password {
            Some(password) => cmd.env("PGPASSWORD", password),
            None => cmd.env_remove("PGPASSWORD"),
        };
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = Command::new(pg_bin("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir);
        cmd
    }

    fn append_conf(&self, text: &str) -> Result<()> {
        let path = self.data_dir.join("postgresql.conf");
        // Appending keeps the file's owner (the PostgreSQL OS user); the last setting of a key wins.
        let mut file =
            fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("appending to {}", path.display()))
    }

    fn start_server(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_before = self.log().len();
            let mut cmd = self.pg_ctl();
            cmd.arg("-l").arg(&self.log_path).args(["-w", "-t", "60", "start"]);
            // Set first: if pg_ctl gives up waiting, drop must still stop a server that came up late.
            self.running = true;
            let Err(e) = run(as_pg_user(&mut cmd)?, "pg_ctl start") else { return Ok(()) };
            // Another process may have taken the port since free_port(): try another one.
            let log = self.log();
            if attempt < 3 && log.get(log_before..).is_some_and(|new| new.contains("Address already in use")) {
                self.running = false;
                self.port = free_port()?;
                self.append_conf(&format!("port = {}\n", self.port))?;
                continue;
            }
            return Err(self.with_log(e));
        }
    }

    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        e.context(format!(
            "PostgreSQL on port {} ({}), log tail:\n{}",
            self.port,
            self.data_dir.display(),
            tail(&self.log(), 30)
        ))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = self.pg_ctl();
        cmd.args(["-w", "-t", "30", "-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
        let stopped = as_pg_user(&mut cmd).ok().and_then(|c| c.status().ok()).is_some_and(|s| s.success());
        if stopped {
            return;
        }
        // pg_ctl failed: kill the postmaster directly; its children exit when they notice.
        let pid = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        // A stale pid file may name an unrelated process by now: only kill a postgres.
        let is_postgres =
            |pid: &i32| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
        if let Some(pid) = pid.filter(|p| *p > 0).filter(is_postgres) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
