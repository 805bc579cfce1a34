//! Profiles: settings from a TOML file, then `TESSERA_JOBQUEUE_*`
//! environment variables, then command-line flags, each value remembering
//! where it came from.
//!
//! The file (`~/.config/tessera/jobqueue.toml`, or `--config`) holds one
//! table per site or queue, and optionally which one is the default:
//!
//! ```toml
//! default = "cluster-debug"
//!
//! [cluster-debug]
//! system = "slurm"
//! queue = "debug"
//! account = "proj42"
//! walltime = "00:30:00"
//! memory = "8GiB"
//! prologue = ["module load openmpi"]
//! env = { OMP_NUM_THREADS = "1" }
//! ```
//!
//! Every key of [`KEYS`] may appear in a profile; scalar keys also as
//! `TESSERA_JOBQUEUE_<KEY>` (upper case). Lists and `env` given by a later
//! layer replace the earlier list, except `env`, merged by variable name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::{Document, Item, TableLike};

use crate::render::{absolute, Launcher, Template};
use crate::{Error, JobSpec, Result, System};

/// The kind of value a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Count,
    List,
    Map,
}

/// Every setting: name, kind, what it means.
pub const KEYS: &[(&str, Kind, &str)] = &[
    ("system", Kind::Str, "batch system: slurm, pbs, torque, sge (default: detected from the commands on PATH)"),
    ("job_name", Kind::Str, "job name; `list` shows jobs whose name starts with `tessera`"),
    ("nodes", Kind::Count, "nodes"),
    ("tasks_per_node", Kind::Count, "MPI ranks (or workers) per node"),
    ("cores_per_task", Kind::Count, "cores per rank"),
    ("memory", Kind::Str, "memory per node with its unit: 4GiB, 4000MB"),
    ("gpus_per_node", Kind::Count, "GPUs per node"),
    ("walltime", Kind::Str, "HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or 90m, 1h, 2d"),
    ("queue", Kind::Str, "partition (Slurm) or queue"),
    ("account", Kind::Str, "account (Slurm, PBS) or project (SGE)"),
    ("log_dir", Kind::Str, "where job output and submitted scripts go"),
    ("workdir", Kind::Str, "directory the job runs in (default: where you submit)"),
    ("env", Kind::Map, "variables exported in the job"),
    ("directives", Kind::List, "extra directives, system syntax without the prefix"),
    ("skip", Kind::List, "leave out default directives containing any of these"),
    ("prologue", Kind::List, "shell lines before the command"),
    ("epilogue", Kind::List, "shell lines after the command"),
    ("array", Kind::Str, "job array: 1-10, 1-10:2, 1-10%4"),
    ("parallel_env", Kind::Str, "SGE parallel environment"),
    ("sge_memory_resource", Kind::Str, "SGE resource for memory (per slot)"),
    ("sge_gpu_resource", Kind::Str, "SGE resource for GPUs"),
    ("template", Kind::Str, "minijinja template file replacing the built-in layout"),
    ("launcher", Kind::Str, "auto, srun, mpirun or none"),
    ("mpi", Kind::Str, "srun --mpi plugin (pmix, pmi2)"),
    ("tessera", Kind::Str, "the tessera binary job scripts run (default: this one)"),
];

fn kind_of(key: &str) -> Option<Kind> {
    KEYS.iter().find(|k| k.0 == key).map(|k| k.1)
}

/// A setting's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Count(u32),
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Count(n) => write!(f, "{n}"),
            Value::List(l) => write!(f, "{l:?}"),
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(v) => write!(f, "environment {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One merged setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub value: Value,
    pub source: Source,
}

/// Settings of one layer or of all merged, keyed by name (`env.NAME` for variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub values: BTreeMap<String, Setting>,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// The profile used, if any.
    pub profile: Option<String>,
}

/// Where to look for the config file and which profile to use.
#[derive(Debug, Clone, Default)]
pub struct ConfigOptions {
    /// `--config`: must exist. Else `TESSERA_JOBQUEUE_CONFIG`, else the
    /// per-user file, which may be absent.
    pub file: Option<PathBuf>,
    /// `--profile`, else `TESSERA_JOBQUEUE_PROFILE`, else the file's `default`.
    pub profile: Option<String>,
}

/// The per-user config file: `$XDG_CONFIG_HOME/tessera/jobqueue.toml`, else
/// `~/.config/tessera/jobqueue.toml`.
///
/// The same rule as the runtime's `transport::secret::config_dir` (this crate
/// does not depend on the runtime, so the few lines are not shared).
pub fn user_config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("tessera").join("jobqueue.toml"))
}

impl Settings {
    /// Merges the file's profile, the environment and `flags` (a layer the
    /// caller built, with [`Source::Flag`] sources), in that order.
    pub fn load(opts: &ConfigOptions, flags: Settings) -> Result<Settings> {
        let env_file = std::env::var_os("TESSERA_JOBQUEUE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
        let (file, must_exist) = match (&opts.file, env_file) {
            (Some(f), _) => (Some(f.clone()), true),
            (None, Some(f)) => (Some(f), true),
            (None, None) => (user_config_file(), false),
        };
        let profile = opts.profile.clone().or_else(|| std::env::var("TESSERA_JOBQUEUE_PROFILE").ok());
        let mut merged = Settings::default();
        if let Some(f) = file {
            match std::fs::read_to_string(&f) {
                Ok(text) => merged = Settings::from_toml(&f, &text, profile.as_deref())?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                    if let Some(p) = &profile {
                        return Err(Error::ConfigValue {
                            file: f,
                            line: None,
                            message: format!("profile `{p}` asked for, but there is no config file"),
                        });
                    }
                }
                Err(e) => return Err(Error::io(f, e)),
            }
        } else if let Some(p) = profile {
            return Err(Error::EnvValue {
                var: "HOME".into(),
                message: format!("profile `{p}` asked for, but no config file location is known (set --config)"),
            });
        }
        merged.merge(Settings::from_env(std::env::vars())?);
        merged.merge(flags);
        Ok(merged)
    }

    /// Reads one profile of a config file's text.
    pub fn from_toml(path: &Path, text: &str, profile: Option<&str>) -> Result<Settings> {
        let doc = Document::parse(text.to_string()).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Error::ConfigSyntax { file: path.into(), line, column, message: e.message().trim().to_string() }
        })?;
        let root = doc.as_table();
        let at = |span: Option<std::ops::Range<usize>>| span.map(|s| line_col(text, s.start).0);
        let err = |line: Option<usize>, message: String| Error::ConfigValue { file: path.into(), line, message };
        let mut profiles = Vec::new();
        let mut default = None;
        for (k, item) in root.iter() {
            let line = at(root.key(k).and_then(|k| k.span()));
            match (k, item) {
                ("default", Item::Value(v)) => match v.as_str() {
                    Some(s) => default = Some(s.to_string()),
                    None => return Err(err(line, "`default` names a profile: a string".into())),
                },
                (_, Item::Table(_)) => profiles.push(k.to_string()),
                _ => {
                    return Err(err(
                        line,
                        format!("`{k}` at the top level: settings belong in a profile table such as [mysite]"),
                    ))
                }
            }
        }
        let chosen = match (profile, &default) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(d)) => Some(d.clone()),
            (None, None) if profiles.len() == 1 => Some(profiles[0].clone()),
            (None, None) => None,
        };
        let mut out = Settings { file: Some(path.into()), profile: chosen.clone(), ..Settings::default() };
        let Some(name) = chosen else { return Ok(out) };
        let Some(table) = root.get(&name).and_then(Item::as_table) else {
            return Err(err(None, format!("no profile [{name}]; the file has: {}", profiles.join(", "))));
        };
        for (k, item) in table.iter() {
            let line = at(table.key(k).and_then(|k| k.span())).or(at(item.span()));
            let source = Source::File { path: path.into(), line: line.unwrap_or(0) };
            let Some(kind) = kind_of(k) else {
                return Err(err(line, format!("unknown key `{k}` in [{name}]; known keys: {}", key_names())));
            };
            let wrong = |what: &str| err(line, format!("`{k}` must be {what}"));
            match kind {
                Kind::Str => {
                    let s = item.as_str().ok_or_else(|| wrong("a string"))?;
                    out.set(k, Value::Str(s.to_string()), source);
                }
                Kind::Count => {
                    let n = item.as_integer().ok_or_else(|| wrong("a whole number"))?;
                    let n = u32::try_from(n).map_err(|_| wrong("a whole number of at least 0"))?;
                    out.set(k, Value::Count(n), source);
                }
                Kind::List => {
                    let a = item.as_array().ok_or_else(|| wrong("a list of strings"))?;
                    let l = a
                        .iter()
                        .map(|v| v.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| wrong("a list of strings"))?;
                    out.set(k, Value::List(l), source);
                }
                Kind::Map => {
                    let t: &dyn TableLike = item.as_table_like().ok_or_else(|| wrong("a table of strings"))?;
                    for (var, v) in t.iter() {
                        let line = at(t.key(var).and_then(|k| k.span())).or(line);
                        let s = v.as_str().ok_or_else(|| err(line, format!("env.{var} must be a string")))?;
                        let source = Source::File { path: path.into(), line: line.unwrap_or(0) };
                        out.set(&format!("env.{var}"), Value::Str(s.to_string()), source);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The `TESSERA_JOBQUEUE_<KEY>` variables among `vars` (scalar keys only).
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> Result<Settings> {
        let mut out = Settings::default();
        for (var, v) in vars {
            let Some(key) = var.strip_prefix("TESSERA_JOBQUEUE_") else { continue };
            let key = key.to_ascii_lowercase();
            if key == "config" || key == "profile" {
                continue;
            }
            let source = Source::Env(var.clone());
            match kind_of(&key) {
                Some(Kind::Str) => out.set(&key, Value::Str(v), source),
                Some(Kind::Count) => {
                    let n = v.trim().parse().map_err(|_| Error::EnvValue {
                        var: var.clone(),
                        message: format!("expected a whole number, got `{v}`"),
                    })?;
                    out.set(&key, Value::Count(n), source)
                }
                Some(_) => {
                    return Err(Error::EnvValue {
                        var,
                        message: format!("`{key}` is a list or table: set it in the config file or with flags"),
                    })
                }
                None => tracing::warn!(var, "not a jobqueue setting; ignored"),
            }
        }
        Ok(out)
    }

    pub fn set(&mut self, key: &str, value: Value, source: Source) {
        self.values.insert(key.to_string(), Setting { value, source });
    }

    /// Later wins; `env.*` entries merge one by one.
    pub fn merge(&mut self, later: Settings) {
        self.values.extend(later.values);
        if later.file.is_some() {
            self.file = later.file;
            self.profile = later.profile;
        }
    }

    fn str(&self, key: &str) -> Option<(&str, &Source)> {
        match self.values.get(key) {
            Some(Setting { value: Value::Str(s), source }) => Some((s, source)),
            _ => None,
        }
    }

    fn count(&self, key: &str) -> Option<u32> {
        match self.values.get(key) {
            Some(Setting { value: Value::Count(n), .. }) => Some(*n),
            _ => None,
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.values.get(key) {
            Some(Setting { value: Value::List(l), .. }) => l.clone(),
            _ => Vec::new(),
        }
    }

    /// Parses a string setting, naming the key and where it came from on error.
    fn parsed<T: std::str::FromStr<Err = Error>>(&self, key: &str) -> Result<Option<T>> {
        let Some((s, source)) = self.str(key) else { return Ok(None) };
        s.parse().map(Some).map_err(|e| with_source(e, key, source))
    }

    /// The batch system: the setting, else detected.
    pub fn system(&self) -> Result<System> {
        match self.parsed::<System>("system")? {
            Some(s) => Ok(s),
            None => System::detect(),
        }
    }

    /// The job description; relative `log_dir` and `workdir` are taken
    /// against `cwd`.
    pub fn job_spec(&self, cwd: &Path) -> Result<JobSpec> {
        let d = JobSpec::default();
        let path = |key: &str, default: &Path| -> PathBuf {
            absolute(self.str(key).map(|(s, _)| Path::new(s)).unwrap_or(default), cwd)
        };
        let env = self
            .values
            .iter()
            .filter_map(|(k, s)| match (k.strip_prefix("env."), &s.value) {
                (Some(var), Value::Str(v)) => Some((var.to_string(), v.clone())),
                _ => None,
            })
            .collect();
        let spec = JobSpec {
            job_name: self.str("job_name").map(|s| s.0.to_string()).unwrap_or(d.job_name),
            nodes: self.count("nodes").unwrap_or(d.nodes),
            tasks_per_node: self.count("tasks_per_node").unwrap_or(d.tasks_per_node),
            cores_per_task: self.count("cores_per_task").unwrap_or(d.cores_per_task),
            memory: self.parsed("memory")?,
            gpus_per_node: self.count("gpus_per_node").unwrap_or(0),
            walltime: self.parsed("walltime")?,
            queue: self.str("queue").map(|s| s.0.to_string()),
            account: self.str("account").map(|s| s.0.to_string()),
            log_dir: path("log_dir", &d.log_dir),
            workdir: path("workdir", cwd),
            env,
            directives: self.list("directives"),
            skip: self.list("skip"),
            prologue: self.list("prologue"),
            epilogue: self.list("epilogue"),
            array: self.parsed("array")?,
            parallel_env: self.str("parallel_env").map(|s| s.0.to_string()).unwrap_or(d.parallel_env),
            sge_memory_resource: self
                .str("sge_memory_resource")
                .map(|s| s.0.to_string())
                .unwrap_or(d.sge_memory_resource),
            sge_gpu_resource: self.str("sge_gpu_resource").map(|s| s.0.to_string()).unwrap_or(d.sge_gpu_resource),
        };
        spec.validate().map_err(|e| match e {
            Error::InvalidValue { field, value, reason } => {
                let key = field.split('.').next().unwrap_or(&field).to_string();
                let src = self
                    .values
                    .get(&field)
                    .or_else(|| self.values.get(&key))
                    .map(|s| format!(" (from {})", s.source))
                    .unwrap_or_default();
                Error::InvalidValue { field: format!("{field}{src}"), value, reason }
            }
            e => e,
        })?;
        Ok(spec)
    }

    /// The template: a file named by `template` (relative to the config file
    /// when it came from one), else the built-in one.
    pub fn template(&self, cwd: &Path) -> Template {
        match self.values.get("template") {
            Some(Setting { value: Value::Str(p), source: Source::File { path, .. } }) => {
                Template::File(absolute(Path::new(p), path.parent().unwrap_or(cwd)))
            }
            Some(Setting { value: Value::Str(p), .. }) => Template::File(absolute(Path::new(p), cwd)),
            _ => Template::Builtin,
        }
    }

    /// The MPI launcher for `system`.
    pub fn launcher(&self, system: System) -> Result<Launcher> {
        let name = self.str("launcher").map(|s| s.0).unwrap_or("auto");
        Launcher::parse(name, self.str("mpi").map(|s| s.0), system).map_err(|e| {
            let key = if self.str("mpi").is_some() && matches!(&e, Error::InvalidValue { field, .. } if field == "mpi")
            {
                "mpi"
            } else {
                "launcher"
            };
            match self.values.get(key) {
                Some(s) => with_source(e, key, &s.source),
                None => e,
            }
        })
    }

    /// The `tessera` binary job scripts run: the setting, else `fallback`.
    pub fn tessera(&self, fallback: &Path) -> PathBuf {
        self.str("tessera").map(|s| PathBuf::from(s.0)).unwrap_or_else(|| fallback.to_path_buf())
    }

    /// Every key with its value and source, defaults included, for `config show`.
    pub fn show(&self) -> Vec<(String, String, String)> {
        let d = JobSpec::default();
        let defaults: BTreeMap<&str, String> = [
            ("job_name", d.job_name.clone()),
            ("nodes", d.nodes.to_string()),
            ("tasks_per_node", d.tasks_per_node.to_string()),
            ("cores_per_task", d.cores_per_task.to_string()),
            ("gpus_per_node", "0".into()),
            ("log_dir", d.log_dir.display().to_string()),
            ("workdir", "(the current directory)".into()),
            ("parallel_env", d.parallel_env.clone()),
            ("sge_memory_resource", d.sge_memory_resource.clone()),
            ("sge_gpu_resource", d.sge_gpu_resource.clone()),
            ("launcher", "auto".into()),
            ("system", "(detected)".into()),
            ("tessera", "(this binary)".into()),
            ("template", "(built-in)".into()),
        ]
        .into();
        let mut rows = Vec::new();
        for (key, kind, _) in KEYS {
            if *kind == Kind::Map {
                for (k, s) in
                    self.values.range(format!("{key}.")..).take_while(|(k, _)| k.starts_with(&format!("{key}.")))
                {
                    rows.push((k.clone(), s.value.to_string(), s.source.to_string()));
                }
                continue;
            }
            match self.values.get(*key) {
                Some(s) => rows.push((key.to_string(), s.value.to_string(), s.source.to_string())),
                None => {
                    if let Some(v) = defaults.get(key) {
                        rows.push((key.to_string(), v.clone(), "default".into()));
                    }
                }
            }
        }
        rows
    }
}

fn with_source(e: Error, key: &str, source: &Source) -> Error {
    match e {
        Error::InvalidValue { value, reason, .. } => {
            Error::InvalidValue { field: format!("{key} (from {source})"), value, reason }
        }
        Error::UnknownSystem { name } => Error::InvalidValue {
            field: format!("{key} (from {source})"),
            value: name,
            reason: "unknown batch system: choose slurm, pbs, torque or sge".into(),
        },
        e => e,
    }
}

fn key_names() -> String {
    KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"default = "site-a"

[site-a]
system = "slurm"
queue = "debug"
memory = "8GiB"
nodes = 2
prologue = ["module load openmpi"]
env = { OMP_NUM_THREADS = "1" }

[site-b]
system = "sge"
parallel_env = "smp"
"#;

    fn file(profile: Option<&str>) -> Result<Settings> {
        Settings::from_toml(Path::new("/etc/jq.toml"), FILE, profile)
    }

    #[test]
    fn the_default_profile_and_sources_with_lines() {
        let s = file(None).unwrap();
        assert_eq!(s.profile.as_deref(), Some("site-a"));
        assert_eq!(s.values["queue"].value, Value::Str("debug".into()));
        assert_eq!(s.values["queue"].source.to_string(), "/etc/jq.toml:5");
        assert_eq!(s.values["nodes"].value, Value::Count(2));
        assert_eq!(s.values["env.OMP_NUM_THREADS"].source.to_string(), "/etc/jq.toml:9");
        let spec = s.job_spec(Path::new("/work")).unwrap();
        assert_eq!((spec.nodes, spec.memory.unwrap().bytes()), (2, 8 << 30));
        assert_eq!(spec.workdir, Path::new("/work"));
        assert_eq!(spec.log_dir, Path::new("/work/tessera-jobs"));
        assert_eq!(s.system().unwrap(), System::Slurm);
        let b = file(Some("site-b")).unwrap();
        assert_eq!(b.system().unwrap(), System::Sge);
        assert_eq!(b.job_spec(Path::new("/")).unwrap().parallel_env, "smp");
    }

    #[test]
    fn env_then_flags_override_the_file() {
        let mut s = file(None).unwrap();
        s.merge(
            Settings::from_env(
                [("TESSERA_JOBQUEUE_QUEUE".to_string(), "long".to_string()), ("PATH".into(), "/bin".into())]
                    .into_iter(),
            )
            .unwrap(),
        );
        assert_eq!(s.values["queue"].source, Source::Env("TESSERA_JOBQUEUE_QUEUE".into()));
        let mut flags = Settings::default();
        flags.set("queue", Value::Str("short".into()), Source::Flag("--queue".into()));
        s.merge(flags);
        let rows = s.show();
        let q = rows.iter().find(|r| r.0 == "queue").unwrap();
        assert_eq!((q.1.as_str(), q.2.as_str()), ("\"short\"", "flag --queue"));
        let n = rows.iter().find(|r| r.0 == "tasks_per_node").unwrap();
        assert_eq!(n.2, "default");
        assert!(rows.iter().any(|r| r.0 == "env.OMP_NUM_THREADS"), "{rows:?}");
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let e = Settings::from_toml(Path::new("/x/jq.toml"), "[a]\nqueue = \"debug\nnodes = 2\n", None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::ConfigSyntax { line: 2, .. }), "{msg}");
        assert!(msg.starts_with("/x/jq.toml:2:"), "{msg}");
        let e = Settings::from_toml(Path::new("/x/jq.toml"), "[a]\nnodes = = 2\n", None).unwrap_err();
        assert!(matches!(e, Error::ConfigSyntax { line: 2, column: 9, .. }), "{e}");
    }

    #[test]
    fn wrong_types_unknown_keys_and_missing_profiles_name_the_line() {
        let bad = |text: &str, says: &str, line: &str| {
            let e = Settings::from_toml(Path::new("jq.toml"), text, None).unwrap_err().to_string();
            assert!(e.contains(says) && e.starts_with(&format!("jq.toml{line}")), "{e}");
        };
        bad("[a]\nnodes = \"two\"\n", "`nodes` must be a whole number", ":2");
        bad("[a]\n\nmemroy = \"4GiB\"\n", "unknown key `memroy`", ":3");
        bad("queue = \"x\"\n", "settings belong in a profile", ":1");
        bad("[a]\nprologue = \"module load x\"\n", "a list of strings", ":2");
        bad("default = \"c\"\n[a]\n[b]\n", "no profile [c]; the file has: a, b", ":");
    }

    #[test]
    fn bad_values_name_the_key_and_where_it_came_from() {
        let s = Settings::from_toml(Path::new("jq.toml"), "[a]\nwalltime = \"10\"\n", None).unwrap();
        let e = s.job_spec(Path::new("/")).unwrap_err().to_string();
        assert!(e.starts_with("walltime (from jq.toml:2):"), "{e}");
        let s = Settings::from_env([("TESSERA_JOBQUEUE_MEMORY".to_string(), "4G".to_string())].into_iter()).unwrap();
        let e = s.job_spec(Path::new("/")).unwrap_err().to_string();
        assert!(e.starts_with("memory (from environment TESSERA_JOBQUEUE_MEMORY)") && e.contains("ambiguous"), "{e}");
        let e = Settings::from_env([("TESSERA_JOBQUEUE_NODES".to_string(), "x".to_string())].into_iter()).unwrap_err();
        assert!(e.to_string().contains("TESSERA_JOBQUEUE_NODES"), "{e}");
        let s = Settings::from_env([("TESSERA_JOBQUEUE_SYSTEM".to_string(), "lsf".to_string())].into_iter()).unwrap();
        let e = s.system().unwrap_err().to_string();
        assert!(e.contains("TESSERA_JOBQUEUE_SYSTEM") && e.contains("slurm, pbs, torque or sge"), "{e}");
        let s = Settings::from_toml(Path::new("jq.toml"), "[a]\njob_name = \"x\\ny\"\n", None).unwrap();
        let e = s.job_spec(Path::new("/")).unwrap_err().to_string();
        assert!(e.starts_with("job_name (from jq.toml:2)") && e.contains("line break"), "{e}");
    }
}
