//! Configuration as Barman reads it: `barman.conf`, included `*.conf` files,
//! `[barman]` defaults inherited by servers, models, and the checks that disable
//! a server whose configuration cannot work.

pub mod ini;
pub mod options;
pub mod os_user;
mod resolve;
pub mod types;
mod validate;

use ini::{Ini, Origin};
use options::{CLUSTER_SERVER_OPTIONS, GLOBAL_OPTIONS, ModelOverrides, Scope, ServerOptions, server_spec};
use resolve::Resolver;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use types::{HostPort, NodeName, Peer};

/// Files tried, in order, when neither `-c` nor `BARMAN_CONFIG_FILE` is given.
pub const DEFAULT_CONFIG_FILES: &[&str] = &["~/.barman.conf", "/etc/barman.conf", "/etc/barman/barman.conf"];

/// A configuration problem that does not stop Barman: printed as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub origin: Option<Origin>,
    pub message: String,
}

impl ConfigWarning {
    pub fn at(origin: &Origin, message: String) -> Self {
        ConfigWarning { origin: Some(origin.clone()), message }
    }
    pub fn general(message: String) -> Self {
        ConfigWarning { origin: None, message }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{o}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A configuration problem that stops every command.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file '{0}' does not exist; give an existing file with -c or BARMAN_CONFIG_FILE")]
    NotFound(String),
    #[error(
        "could not find any configuration file at the default locations ({}); give one with -c or BARMAN_CONFIG_FILE",
        DEFAULT_CONFIG_FILES.join(", ")
    )]
    NoDefault,
    #[error("{0}")]
    Ini(#[from] ini::IniError),
    #[error("{file}: option \"barman_home\" is required in the [barman] section; add the directory of the catalog")]
    MissingHome { file: String },
    #[error("{origin}: the reserved word '{name}' cannot name a server; rename the section")]
    ReservedName { name: String, origin: String },
    #[error(
        "{file}: the configuration file contains a not empty [barman] section; only the main file may change [barman]"
    )]
    IncludeChangesGlobal { file: String },
    #[error("{origin}: [barman] {why}")]
    GlobalInterpolation { origin: String, why: String },
}

/// The `[barman]` section.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    pub barman_home: PathBuf,
    pub lock_directory: PathBuf,
    pub lock_directory_cleanup: bool,
    pub config_changes_queue: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    /// This node's name in the cluster; the node and cluster commands require it.
    pub node_name: Option<NodeName>,
    /// The data centre of this node; unset is the site `default` ([`GlobalConfig::site`]).
    pub node_site: Option<String>,
    /// Where the node's gRPC server binds.
    pub node_listen: Option<HostPort>,
    /// Where other nodes dial this one: `node_advertise`, else `node_listen`.
    pub node_advertise: Option<HostPort>,
    /// The nodes `cluster init` bootstraps and a starting node looks for the cluster at.
    pub cluster_peers: Vec<Peer>,
    pub cluster_ca_file: PathBuf,
    pub node_cert_file: PathBuf,
    pub node_key_file: PathBuf,
    /// How long an owner may stream after its last committed renewal.
    pub ownership_lease: Duration,
    /// The Prometheus endpoint; `None`: no endpoint.
    pub node_metrics_listen: Option<HostPort>,
    /// Whether WAL client certificates that name no server are served.
    pub wal_client_unbound: types::UnboundClients,
}

impl GlobalConfig {
    /// The site of this node: `node_site`, or `default`.
    pub fn site(&self) -> &str {
        self.node_site.as_deref().unwrap_or("default")
    }
}

/// A server after inheritance, defaults, models and validation.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub opts: ServerOptions,
    /// Why the server is disabled; empty when it is not.
    pub msg_list: Vec<String>,
    pub active_model: Option<String>,
    /// Where each option set by the user comes from.
    pub sources: HashMap<&'static str, Origin>,
    /// Passive node (fed by another Barman through `primary_ssh_command`).
    pub passive: bool,
}

impl ServerConfig {
    pub fn disabled(&self) -> bool {
        self.opts.disabled
    }
    pub fn active(&self) -> bool {
        self.opts.active
    }
    /// Records a configuration error and disables the server.
    pub fn disable(&mut self, msg: impl Into<String>) {
        self.msg_list.push(msg.into());
        self.opts.disabled = true;
    }
    fn dir(&self, v: &Option<String>) -> PathBuf {
        PathBuf::from(v.as_deref().unwrap_or("None"))
    }
    pub fn backup_directory(&self) -> PathBuf {
        self.dir(&self.opts.backup_directory)
    }
    pub fn basebackups_directory(&self) -> PathBuf {
        self.dir(&self.opts.basebackups_directory)
    }
    pub fn wals_directory(&self) -> PathBuf {
        self.dir(&self.opts.wals_directory)
    }
    pub fn incoming_wals_directory(&self) -> PathBuf {
        self.dir(&self.opts.incoming_wals_directory)
    }
    pub fn streaming_wals_directory(&self) -> PathBuf {
        self.dir(&self.opts.streaming_wals_directory)
    }
    pub fn errors_directory(&self) -> PathBuf {
        self.dir(&self.opts.errors_directory)
    }
    pub fn xlogdb_directory(&self) -> PathBuf {
        self.dir(&self.opts.xlogdb_directory)
    }
    /// Python's `str()` of an option as Barman shows it once the server is set
    /// up (the WAL retention policy prints as `MAIN` when a policy is enforced).
    pub fn show(&self, name: &str) -> Option<String> {
        if name == "wal_retention_policy" && matches!(self.opts.retention_policy, Some(types::Retention::Policy(_))) {
            return Some("MAIN".into());
        }
        self.opts.show(name)
    }

    /// An option's value as Barman encodes it in JSON once the server is set up (the WAL
    /// retention policy as `MAIN`, as in `show`).
    pub fn json(&self, name: &str) -> Option<serde_json::Value> {
        if name == "wal_retention_policy" && matches!(self.opts.retention_policy, Some(types::Retention::Policy(_))) {
            return Some(serde_json::json!("MAIN"));
        }
        self.opts.json(name)
    }

    /// `PATH` for external programs: `path_prefix` first, then ours.
    pub fn path_env(&self) -> Option<std::ffi::OsString> {
        let prefix = self.opts.path_prefix.as_deref()?;
        let mut p = std::ffi::OsString::from(prefix);
        if let Some(cur) = std::env::var_os("PATH") {
            p.push(":");
            p.push(cur);
        }
        Some(p)
    }
    /// The source file of an option's value, or `default`.
    pub fn source_of(&self, key: &str) -> String {
        self.sources.get(key).map_or("default".to_string(), |o| o.file.display().to_string())
    }
}

/// A model: a set of overrides a server of the same cluster can switch to.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub cluster: Option<String>,
    pub overrides: ModelOverrides,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main configuration file.
    pub file: PathBuf,
    pub global: GlobalConfig,
    pub servers: BTreeMap<String, ServerConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    pub warnings: Vec<ConfigWarning>,
    /// Errors between servers (conflicting paths): most commands stop on them.
    pub global_errors: Vec<String>,
    /// Bad values of the cluster's options, one line each (`file:line: option 'x' in
    /// [section]: what is wrong; expected ...`). The node and the cluster commands refuse
    /// to start on any of them; other commands only print the warnings, as Barman would.
    pub cluster_errors: Vec<String>,
    ini: Ini,
}

/// The main file read, before privileges are dropped and includes are read.
pub struct MainConfig {
    file: PathBuf,
    ini: Ini,
}

fn expand_user(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return Path::new(&home).join(rest);
    }
    PathBuf::from(p)
}

impl MainConfig {
    /// Reads `-c FILE`, else `$BARMAN_CONFIG_FILE`, else the first default file.
    pub fn read(explicit: Option<&Path>) -> Result<MainConfig, ConfigError> {
        let chosen = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => std::env::var_os("BARMAN_CONFIG_FILE").map(PathBuf::from),
        };
        let file = match chosen {
            Some(p) => {
                let p = expand_user(&p.to_string_lossy());
                if !p.exists() {
                    return Err(ConfigError::NotFound(p.display().to_string()));
                }
                p
            }
            None => DEFAULT_CONFIG_FILES
                .iter()
                .map(|p| expand_user(p))
                .find(|p| p.exists())
                .ok_or(ConfigError::NoDefault)?,
        };
        let mut ini = Ini::default();
        ini.read_file(&file)?;
        Ok(MainConfig { file, ini })
    }

    /// Parses a configuration given as text (tests, tools).
    pub fn from_str(text: &str, file: &Path) -> Result<MainConfig, ConfigError> {
        let mut ini = Ini::default();
        ini.read_str(text, file)?;
        Ok(MainConfig { file: file.to_path_buf(), ini })
    }

    /// `barman_user` (default `barman`): the user commands switch to.
    pub fn barman_user(&self) -> Result<String, ConfigError> {
        Ok(global_or_default(&self.ini, "barman_user", "")?.unwrap_or_default())
    }

    /// Reads the included files and builds every server.
    pub fn finish(mut self) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let home = global_value(&self.ini, "barman_home")?
            .ok_or_else(|| ConfigError::MissingHome { file: self.file.display().to_string() })?;
        let snapshot = global_snapshot(&self.ini);
        if let Some(dir) = global_value(&self.ini, "configuration_files_directory")? {
            let dir = expand_user(&dir);
            if dir.is_dir() {
                let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
                    Err(e) => {
                        warnings.push(ConfigWarning::general(format!(
                            "cannot read the configuration_files_directory \"{}\" ({e}); its files are not included",
                            dir.display()
                        )));
                        Vec::new()
                    }
                };
                files.retain(|p| p.extension().is_some_and(|e| e == "conf"));
                files.sort();
                for f in files {
                    self.include(&f, &snapshot, &mut warnings)?;
                }
            } else {
                warnings.push(ConfigWarning::general(format!(
                    "ignoring the \"configuration_files_directory\" option as \"{}\" is not a directory",
                    dir.display()
                )));
            }
        }
        let auto = Path::new(&home).join(".barman.auto.conf");
        if auto.exists() {
            self.include(&auto, &snapshot, &mut warnings)?;
        }
        Config::build(self.file, self.ini, warnings)
    }

    fn include(
        &mut self,
        f: &Path,
        snapshot: &[(String, String)],
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<(), ConfigError> {
        if !f.is_file() {
            warnings
                .push(ConfigWarning::general(format!("discarding configuration file {} (not a file)", f.display())));
            return Ok(());
        }
        self.ini.read_file(f)?;
        if global_snapshot(&self.ini) != snapshot {
            return Err(ConfigError::IncludeChangesGlobal { file: f.display().to_string() });
        }
        Ok(())
    }
}

/// A `[barman]` value as Barman's `Config.get` returns it: interpolated against
/// `[barman]` and `[DEFAULT]`, a literal `None` unset, one pair of quotes
/// stripped; empty counts as unset, as Barman's `or default` treats it.
fn global_value(ini: &Ini, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(raw) = ini.raw("barman", key) else { return Ok(None) };
    let lookup = |name: &str| ini.raw("barman", name).map(|v| v.value.clone());
    let v = ini::interpolate(key, &raw.value, &lookup, 0)
        .map_err(|e| ConfigError::GlobalInterpolation { origin: raw.origin.to_string(), why: e.to_string() })?;
    if v == "None" {
        return Ok(None);
    }
    let v = ini::strip_quotes(&v);
    Ok((!v.is_empty()).then(|| v.to_string()))
}

/// A `[barman]` value, or the option table's default when it is unset.
fn global_or_default(ini: &Ini, key: &str, home: &str) -> Result<Option<String>, ConfigError> {
    if let Some(v) = global_value(ini, key)? {
        return Ok(Some(v));
    }
    let default = GLOBAL_OPTIONS.iter().find(|s| s.name == key).and_then(|s| s.default);
    Ok(default.map(|d| d.replace("%(barman_home)s", home)))
}

fn global_snapshot(ini: &Ini) -> Vec<(String, String)> {
    ini.section("barman")
        .map(|s| s.options.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect())
        .unwrap_or_default()
}

fn parse_bool_text(v: &str) -> Option<bool> {
    match <bool as types::OptType>::parse(v) {
        types::Parsed::Set(b) => Some(b),
        _ => None,
    }
}

impl Config {
    /// Reads and builds a configuration from text in one step (tests, tools).
    pub fn from_text(text: &str, file: &Path) -> Result<Config, ConfigError> {
        MainConfig::from_str(text, file)?.finish()
    }

    fn build(file: PathBuf, ini: Ini, mut warnings: Vec<ConfigWarning>) -> Result<Config, ConfigError> {
        let barman_home = global_value(&ini, "barman_home")?.unwrap_or_default();
        let g = |k: &str| global_or_default(&ini, k, &barman_home);
        let mut cr = Resolver::new(&ini, "barman", vec![("barman_home", barman_home.clone())], true);
        let cleanup = g("lock_directory_cleanup")?.unwrap_or_default();
        let lock_directory_cleanup = parse_bool_text(&cleanup).unwrap_or_else(|| {
            warnings.push(ConfigWarning::general(format!(
                "[barman] lock_directory_cleanup = '{cleanup}' is not a boolean; using true"
            )));
            true
        });
        let global = GlobalConfig {
            barman_home: PathBuf::from(&barman_home),
            lock_directory: PathBuf::from(g("barman_lock_directory")?.unwrap_or_default()),
            lock_directory_cleanup,
            config_changes_queue: PathBuf::from(g("config_changes_queue")?.unwrap_or_default()),
            log_file: g("log_file")?.map(PathBuf::from),
            log_level: g("log_level")?.unwrap_or_default(),
            // The cluster's options resolve as server options do: a bad value warns and is
            // not used (and is a cluster error below), so Barman's own commands still run.
            // `node_listen` comes before `node_advertise`, whose default refers to it.
            node_name: cr.resolve("node_name"),
            node_site: cr.resolve("node_site"),
            node_listen: cr.resolve("node_listen"),
            node_advertise: cr.resolve("node_advertise"),
            cluster_peers: cr.resolve("cluster_peers"),
            cluster_ca_file: cr.resolve("cluster_ca_file"),
            node_cert_file: cr.resolve("node_cert_file"),
            node_key_file: cr.resolve("node_key_file"),
            ownership_lease: cr.resolve("ownership_lease"),
            node_metrics_listen: cr.resolve("node_metrics_listen"),
            wal_client_unbound: cr.resolve("wal_client_unbound"),
        };
        warnings.append(&mut cr.warnings);
        let mut cluster_errors: Vec<String> = cr.rejected.iter().map(|r| r.line()).collect();
        for e in validate::check_cluster(&global, &cr.sources) {
            cluster_errors.push(e.to_string());
            warnings.push(e);
        }
        warn_unknown_keys(&ini, "barman", true, &mut warnings);

        let mut servers = BTreeMap::new();
        let mut models = BTreeMap::new();
        for name in &ini.order {
            if name == "barman" {
                continue;
            }
            let origin = ini.section(name).and_then(|s| s.origin.clone());
            if name == "all" {
                return Err(ConfigError::ReservedName {
                    name: name.clone(),
                    origin: origin.map_or_else(|| file.display().to_string(), |o| o.to_string()),
                });
            }
            let is_model = ini.raw(name, "model").and_then(|v| parse_bool_text(&v.value)).unwrap_or(false);
            let builtins = vec![("name", name.clone()), ("barman_home", barman_home.clone())];
            if is_model {
                let mut r = Resolver::new(&ini, name, builtins, false);
                let overrides = ModelOverrides::resolve(&mut r);
                warnings.append(&mut r.warnings);
                warn_unknown_keys(&ini, name, false, &mut warnings);
                let cluster = overrides.cluster.clone().flatten();
                if cluster.is_none() {
                    warnings.push(ConfigWarning::general(format!(
                        "model [{name}] has no 'cluster' option; it cannot be applied to any server"
                    )));
                }
                models.insert(name.clone(), ModelConfig { name: name.clone(), cluster, overrides });
                continue;
            }
            let mut r = Resolver::new(&ini, name, builtins, true);
            let opts = ServerOptions::resolve(&mut r);
            warnings.append(&mut r.warnings);
            cluster_errors.extend(
                r.rejected.iter().filter(|x| CLUSTER_SERVER_OPTIONS.iter().any(|s| s.name == x.key)).map(|x| x.line()),
            );
            warn_unknown_keys(&ini, name, false, &mut warnings);
            let passive = opts.primary_ssh_command.is_some();
            let sc = ServerConfig {
                name: name.clone(),
                opts,
                msg_list: Vec::new(),
                active_model: None,
                sources: r.sources,
                passive,
            };
            servers.insert(name.clone(), sc);
        }
        let mut cfg =
            Config { file, global, servers, models, warnings, global_errors: Vec::new(), cluster_errors, ini };
        cfg.apply_active_models();
        validate::check_paths(&mut cfg);
        let names: Vec<String> = cfg.servers.keys().cloned().collect();
        for n in names {
            if let Some(s) = cfg.servers.get_mut(&n) {
                validate::validate_server(s, &mut cfg.warnings);
            }
        }
        Ok(cfg)
    }

    fn apply_active_models(&mut self) {
        for s in self.servers.values_mut() {
            let f = s.backup_directory().join(".active-model.auto");
            let Ok(text) = std::fs::read_to_string(&f) else { continue };
            let model = text.trim().to_string();
            if model.is_empty() {
                continue;
            }
            match self.models.get(&model) {
                None => s.disable(format!(
                    "Model '{model}' is set as the active model for the server '{}' but the model does not exist.",
                    s.name
                )),
                Some(m) if m.cluster != s.opts.cluster => {
                    self.warnings.push(ConfigWarning::general(format!(
                        "model '{model}' has 'cluster={}', which is not compatible with 'cluster={}' from server '{}'; not applied",
                        m.cluster.as_deref().unwrap_or("None"),
                        s.opts.cluster.as_deref().unwrap_or("None"),
                        s.name
                    )));
                }
                Some(m) => {
                    s.opts.apply(&m.overrides);
                    s.active_model = Some(model);
                }
            }
        }
    }

    /// Raw `[barman]` options as written, for `diagnose`.
    pub fn global_raw(&self) -> Vec<(String, String)> {
        global_snapshot(&self.ini)
    }
}

/// Warns about options the table does not know, or that have no effect where written.
fn warn_unknown_keys(ini: &Ini, section: &str, global: bool, warnings: &mut Vec<ConfigWarning>) {
    let Some(sect) = ini.section(section) else { return };
    for (key, v) in &sect.options {
        let known_server = server_spec(key);
        let known_global = GLOBAL_OPTIONS.iter().any(|s| s.name == key.as_str());
        let msg = if global {
            match known_server {
                None if !known_global => {
                    Some(format!("unknown option '{key}' in [barman]; it is ignored (check the spelling)"))
                }
                Some(s) if s.scope == Scope::Server && s.name != "disabled" => {
                    Some(format!("option '{key}' in [barman] applies only to server sections; it is ignored"))
                }
                _ if key == "log_format" => Some("option 'log_format' is accepted but has no effect".to_string()),
                _ => None,
            }
        } else if known_global && known_server.is_none() {
            Some(format!("option '{key}' in [{section}] belongs to [barman]; it is ignored"))
        } else if key == "disabled" {
            Some("option 'disabled' is set by configuration errors, not by users; it is ignored".to_string())
        } else if known_server.is_none() && key != "model" {
            Some(format!("unknown option '{key}' in [{section}]; it is ignored (check the spelling)"))
        } else {
            None
        };
        if let Some(m) = msg {
            warnings.push(ConfigWarning::at(&v.origin, m));
        }
    }
}

#[cfg(test)]
mod tests;
