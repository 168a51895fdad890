//! Fuzzes what membrane-cni reads from a runtime: the network config on stdin, CNI_ARGS and
//! the CNI_* environment, through the pure parsing functions and `cni::run` (on paths that
//! stop before any socket or file IO). Whatever comes in, nothing panics, and every refusal
//! is a CniError whose code is one the spec (or docs/cni.md) defines and whose JSON is
//! what a runtime can read. Bounded: a few hundred cases per property, a few seconds.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use membrane::cni::config::{self, Strictness};
use membrane::cni::error::CniError;
use membrane::cni::spec::{self, Command};
use membrane::cni::{args, env};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Every code membrane-cni may answer with (CNI 1.0.0 well-known codes and ours, >= 100).
const KNOWN_CODES: [u32; 12] = [1, 2, 3, 4, 5, 6, 7, 11, 100, 101, 102, 103];
/// What a config can be refused with: version, unsupported field, not JSON, invalid.
const CONFIG_CODES: [u32; 4] = [1, 2, 6, 7];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A config that parses: the base every mutation starts from.
fn valid_conf() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "membrane",
        "type": "membrane-cni",
        "socket": "/nonexistent/membrane-fuzz/plugin.sock",
        "queueDir": "/nonexistent/membrane-fuzz/queue",
        "labels": {"app": "web"},
        "args": {"cni": {"labels": {"tier": "fe"}}},
        "runtimeConfig": {"labels": {"env": "prod"}},
        "dns": {"nameservers": ["10.0.0.10"]},
    })
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("1.0.0"),
            Just("0.4.0"),
            Just("0.3.1"),
            Just("0.1.0"),
            Just("2.0.0"),
            Just(""),
            Just("1.0"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,10}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Paths into the base config where a mutation lands (top level and the nested objects).
const FIELDS: [&[&str]; 14] = [
    &["cniVersion"],
    &["name"],
    &["type"],
    &["socket"],
    &["queueDir"],
    &["labels"],
    &["labels", "app"],
    &["args"],
    &["args", "cni"],
    &["args", "cni", "labels"],
    &["runtimeConfig"],
    &["runtimeConfig", "labels"],
    &["dns"],
    &["prevResult"],
];

#[derive(Clone, Debug)]
enum Mutation {
    Remove(usize),
    Set(usize, Value),
    /// A new key next to the field (ipam, mac, ips, anything).
    Add(usize, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = 0..FIELDS.len();
    let key = prop_oneof![
        Just("ipam".to_string()),
        Just("ips".to_string()),
        Just("mac".to_string()),
        Just("labels".to_string()),
        ".{0,8}",
    ];
    prop_oneof![
        field.clone().prop_map(Mutation::Remove),
        (field.clone(), any_json()).prop_map(|(f, v)| Mutation::Set(f, v)),
        (field, key, any_json()).prop_map(|(f, k, v)| Mutation::Add(f, k, v)),
    ]
}

/// The object at `path` in `conf`, if every step is an object (earlier mutations may have
/// replaced one with something else, and then the mutation is skipped).
fn object_at<'a>(conf: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut at = conf;
    for p in path {
        at = at.as_object_mut()?.get_mut(*p)?;
    }
    at.as_object_mut()
}

fn apply(conf: &mut Value, m: &Mutation) {
    match m {
        Mutation::Remove(f) => {
            let (last, path) = FIELDS[*f].split_last().expect("paths are not empty");
            if let Some(o) = object_at(conf, path) {
                o.remove(*last);
            }
        }
        Mutation::Set(f, v) => {
            let (last, path) = FIELDS[*f].split_last().expect("paths are not empty");
            if let Some(o) = object_at(conf, path) {
                o.insert((*last).to_string(), v.clone());
            }
        }
        Mutation::Add(f, k, v) => {
            if let Some(o) = object_at(conf, FIELDS[*f]) {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Config bytes: a mutated valid config, its text cut or with bytes overwritten, or noise.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 0..4).prop_map(|ms| {
        let mut c = valid_conf();
        for m in &ms {
            apply(&mut c, m);
        }
        serde_json::to_vec(&c).unwrap_or_default()
    })
}

fn conf_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => mutated(),
        2 => (mutated(), any::<prop::sample::Index>())
            .prop_map(|(b, i)| b[..i.index(b.len() + 1)].to_vec()),
        2 => (mutated(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
            .prop_map(|(mut b, edits)| {
                if !b.is_empty() {
                    for (i, byte) in edits {
                        let k = i.index(b.len());
                        b[k] = byte;
                    }
                }
                b
            }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn check_error(e: &CniError, allowed: &[u32], what: &str) -> Result<(), TestCaseError> {
    let code = e.code.as_u32();
    prop_assert!(
        allowed.contains(&code),
        "{what}: code {code} not in {allowed:?}: {e:?}"
    );
    prop_assert!(
        !e.msg.trim().is_empty(),
        "{what}: empty message for code {code}"
    );
    for version in [spec::CURRENT_VERSION, "0.3.1"] {
        let wire: Value = serde_json::from_str(&e.to_json(version))
            .map_err(|err| TestCaseError::fail(format!("{what}: error JSON unreadable: {err}")))?;
        prop_assert_eq!(wire["code"].as_u64(), Some(u64::from(code)));
        prop_assert_eq!(wire["cniVersion"].as_str(), Some(version));
        prop_assert_eq!(wire["msg"].as_str(), Some(e.msg.as_str()));
    }
    Ok(())
}

/// An environment variable value: plain, empty, CNI-ish, or not UTF-8.
fn env_value() -> impl Strategy<Value = Option<OsString>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(OsString::new())),
        3 => "[a-zA-Z0-9_./:;= -]{0,20}".prop_map(|s| Some(OsString::from(s))),
        2 => ".{0,20}".prop_map(|s| Some(OsString::from(s))),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| Some(OsString::from_vec(b))),
        1 => prop_oneof![Just("eth0"), Just("/run/netns/x"), Just("abc-123"), Just("0123456789abcdef")]
            .prop_map(|s| Some(OsString::from(s))),
    ]
}

fn env_map() -> impl Strategy<Value = HashMap<String, OsString>> {
    let names = [
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ];
    prop::collection::vec(env_value(), names.len()).prop_map(move |vals| {
        names
            .iter()
            .zip(vals)
            .filter_map(|(n, v)| v.map(|v| (n.to_string(), v)))
            .collect()
    })
}

proptest! {
    #![proptest_config(config())]

    /// The config parser never panics; refusals carry a config error code; a config that
    /// passes the full check also passes DEL's lighter one, with the same socket and queue.
    #[test]
    fn config_parse_is_total(bytes in conf_bytes()) {
        let full = config::parse(&bytes, Strictness::Full);
        let del = config::parse(&bytes, Strictness::DeleteOnly);
        if let Err(e) = &full {
            check_error(e, &CONFIG_CODES, "config::parse(Full)")?;
        }
        if let Err(e) = &del {
            check_error(e, &CONFIG_CODES, "config::parse(DeleteOnly)")?;
        }
        if let Ok(f) = &full {
            let d = del.as_ref().map_err(|e| TestCaseError::fail(format!("DEL refuses what ADD takes: {e:?}")))?;
            prop_assert_eq!(&f.socket, &d.socket);
            prop_assert_eq!(&f.queue_dir, &d.queue_dir);
            prop_assert!(spec::SUPPORTED_VERSIONS.contains(&f.cni_version.as_str()));
        }
        let v = config::error_version(&bytes);
        prop_assert!(spec::SUPPORTED_VERSIONS.contains(&v.as_str()), "error_version gave {v:?}");
    }

    /// CNI_ARGS: anything, or pairs made of the characters runtimes use; Ok or code 4.
    #[test]
    fn cni_args_parse_is_total(raw in prop_oneof![
        ".{0,40}",
        "((label_|IgnoreUnknown|K8S_POD_NAME|[A-Za-z_]{1,6})=[A-Za-z0-9_.=/-]{0,8};?){0,5}",
    ]) {
        match args::parse(&raw) {
            Ok(a) => {
                for (k, v) in &a.labels {
                    prop_assert!(!k.is_empty(), "empty label key from {raw:?}: {v:?}");
                    prop_assert!(raw.contains(k.as_str()) && raw.contains(v.as_str()), "label {k}={v} not in {raw:?}");
                }
            }
            Err(e) => check_error(&e, &[4], "args::parse")?,
        }
    }

    /// The environment: every command and any variables, valid or not, UTF-8 or not.
    #[test]
    fn environment_is_total(
        command in env_value(),
        vars in env_map(),
    ) {
        let cmd_lookup = |k: &str| if k == "CNI_COMMAND" { command.clone() } else { None };
        let lookup = |k: &str| vars.get(k).cloned();
        if let Err(e) = env::command(&cmd_lookup) {
            check_error(&e, &[4], "env::command")?;
        }
        for c in [Command::Add, Command::Del, Command::Check, Command::Version] {
            match env::invocation(c, &lookup) {
                Ok(inv) => {
                    if matches!(c, Command::Add | Command::Check) {
                        prop_assert!(inv.netns.starts_with('/'), "{c:?} took netns {:?}", inv.netns);
                    }
                    if c != Command::Version {
                        prop_assert!(!inv.container_id.is_empty() && !inv.ifname.is_empty(), "{inv:?}");
                        prop_assert!(inv.ifname.len() <= 15, "{inv:?}");
                    }
                }
                Err(e) => check_error(&e, &[4], "env::invocation")?,
            }
        }
    }

    /// The whole plugin, as the binary runs it, on every command except DEL and CHECK (which
    /// may reach the socket or the queue dir): ADD with a netns that does not exist stops
    /// before any IO. Never panics; an error is a known code; a success is VERSION's answer.
    #[test]
    fn run_is_total(
        command in prop_oneof![
            Just("ADD".to_string()), Just("VERSION".to_string()), Just("STATUS".to_string()),
            Just("GC".to_string()), Just("add".to_string()), "[A-Z]{0,6}",
        ],
        vars in env_map(),
        bytes in conf_bytes(),
    ) {
        prop_assume!(command != "DEL" && command != "CHECK");
        let mut vars = vars;
        if vars.contains_key("CNI_NETNS") {
            vars.insert("CNI_NETNS".into(), "/nonexistent/membrane-fuzz/netns".into());
        }
        let lookup = |k: &str| if k == "CNI_COMMAND" {
            Some(OsString::from(command.clone()))
        } else {
            vars.get(k).cloned()
        };
        let (out, version) = membrane::cni::run(&lookup, &mut bytes.as_slice());
        prop_assert!(spec::SUPPORTED_VERSIONS.contains(&version.as_str()), "{version:?}");
        match out {
            Ok(text) => {
                prop_assert_eq!(command.as_str(), "VERSION", "only VERSION succeeds here: {:?}", text);
                let v: Value = serde_json::from_str(text.as_deref().unwrap_or(""))
                    .map_err(|e| TestCaseError::fail(format!("VERSION output: {e}")))?;
                prop_assert!(v["supportedVersions"].is_array(), "{v}");
            }
            Err(e) => check_error(&e, &KNOWN_CODES, "run")?,
        }
    }
}

/// The mutations start from configs and variables that are accepted, so the properties above
/// see both sides of every check, not only refusals.
#[test]
fn the_fuzz_bases_are_accepted() {
    let bytes = serde_json::to_vec(&valid_conf()).unwrap();
    let conf = config::parse(&bytes, Strictness::Full).expect("the base config parses");
    assert_eq!(conf.labels.get("app").map(String::as_str), Some("web"));
    let vars: HashMap<&str, &str> = [
        ("CNI_CONTAINERID", "abc-123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "label_app=web;K8S_POD_NAME=p"),
    ]
    .into();
    let lookup = |k: &str| vars.get(k).map(OsString::from);
    let inv = env::invocation(Command::Add, &lookup).expect("the base environment is valid");
    let a = args::parse(&inv.cni_args).expect("the base CNI_ARGS parse");
    assert_eq!(a.labels.get("app").map(String::as_str), Some("web"));
}
