//! The cloud-config schema: every key coreos-cloudinit accepts, with its type, allowed values (`valid` regex),
//! deprecation note and environment variable, transcribed from its config/*.go struct tags.

/// The type of a key's value, as coreos-cloudinit's Go field type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Str,
    Int,
    Float,
    Bool,
    Struct(&'static [Field]),
    StrSlice,
    StructSlice(&'static [Field]),
}

impl Ty {
    /// The type as coreos-cloudinit's validator names it in "incorrect type" warnings.
    pub(crate) fn human(self) -> &'static str {
        match self {
            Ty::Str => "string",
            Ty::Int => "int",
            Ty::Float => "float64",
            Ty::Bool => "bool",
            Ty::Struct(_) => "struct",
            Ty::StrSlice => "[]string",
            Ty::StructSlice(_) => "[]struct",
        }
    }
}

/// One key of a struct.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    /// The key with underscores (dashes in documents are read as underscores).
    pub name: &'static str,
    pub ty: Ty,
    /// Anchored regex the value's text must match when it is not empty.
    pub valid: Option<&'static str>,
    /// Reason shown in a "deprecated key" warning.
    pub deprecated: Option<&'static str>,
    /// Environment variable coreos-cloudinit writes the value to.
    pub env: Option<&'static str>,
}

const fn f(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        valid: None,
        deprecated: None,
        env: None,
    }
}

const fn e(name: &'static str, ty: Ty, env: &'static str) -> Field {
    Field {
        name,
        ty,
        valid: None,
        deprecated: None,
        env: Some(env),
    }
}

const fn ed(name: &'static str, ty: Ty, env: &'static str, why: &'static str) -> Field {
    Field {
        name,
        ty,
        valid: None,
        deprecated: Some(why),
        env: Some(env),
    }
}

const fn valid(mut field: Field, re: &'static str) -> Field {
    field.valid = Some(re);
    field
}

const fn deprecated(mut field: Field, why: &'static str) -> Field {
    field.deprecated = Some(why);
    field
}

use Ty::{Bool, Float, Int, Str, StrSlice};

const ETCD2_WHY: &str = "etcd2 options no longer work for etcd";

pub(crate) const ETCD: &[Field] = &[
    e("addr", Str, "ETCD_ADDR"),
    ed(
        "advertise_client_urls",
        Str,
        "ETCD_ADVERTISE_CLIENT_URLS",
        ETCD2_WHY,
    ),
    e("bind_addr", Str, "ETCD_BIND_ADDR"),
    e("ca_file", Str, "ETCD_CA_FILE"),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("cluster_active_size", Int, "ETCD_CLUSTER_ACTIVE_SIZE"),
    e("cluster_remove_delay", Float, "ETCD_CLUSTER_REMOVE_DELAY"),
    e("cluster_sync_interval", Float, "ETCD_CLUSTER_SYNC_INTERVAL"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    ed(
        "discovery_fallback",
        Str,
        "ETCD_DISCOVERY_FALLBACK",
        ETCD2_WHY,
    ),
    ed("discovery_srv", Str, "ETCD_DISCOVERY_SRV", ETCD2_WHY),
    ed("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY", ETCD2_WHY),
    ed("election_timeout", Int, "ETCD_ELECTION_TIMEOUT", ETCD2_WHY),
    ed(
        "force_new_cluster",
        Bool,
        "ETCD_FORCE_NEW_CLUSTER",
        ETCD2_WHY,
    ),
    e("graphite_host", Str, "ETCD_GRAPHITE_HOST"),
    ed(
        "heartbeat_interval",
        Int,
        "ETCD_HEARTBEAT_INTERVAL",
        ETCD2_WHY,
    ),
    e("http_read_timeout", Float, "ETCD_HTTP_READ_TIMEOUT"),
    e("http_write_timeout", Float, "ETCD_HTTP_WRITE_TIMEOUT"),
    ed(
        "initial_advertise_peer_urls",
        Str,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        ETCD2_WHY,
    ),
    ed("initial_cluster", Str, "ETCD_INITIAL_CLUSTER", ETCD2_WHY),
    ed(
        "initial_cluster_state",
        Str,
        "ETCD_INITIAL_CLUSTER_STATE",
        ETCD2_WHY,
    ),
    ed(
        "initial_cluster_token",
        Str,
        "ETCD_INITIAL_CLUSTER_TOKEN",
        ETCD2_WHY,
    ),
    e("key_file", Str, "ETCD_KEY_FILE"),
    ed(
        "listen_client_urls",
        Str,
        "ETCD_LISTEN_CLIENT_URLS",
        ETCD2_WHY,
    ),
    ed("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS", ETCD2_WHY),
    e("max_result_buffer", Int, "ETCD_MAX_RESULT_BUFFER"),
    e("max_retry_attempts", Int, "ETCD_MAX_RETRY_ATTEMPTS"),
    ed("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS", ETCD2_WHY),
    ed("max_wals", Int, "ETCD_MAX_WALS", ETCD2_WHY),
    e("name", Str, "ETCD_NAME"),
    e("peer_addr", Str, "ETCD_PEER_ADDR"),
    e("peer_bind_addr", Str, "ETCD_PEER_BIND_ADDR"),
    e("peer_ca_file", Str, "ETCD_PEER_CA_FILE"),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_election_timeout", Int, "ETCD_PEER_ELECTION_TIMEOUT"),
    e(
        "peer_heartbeat_interval",
        Int,
        "ETCD_PEER_HEARTBEAT_INTERVAL",
    ),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peers", Str, "ETCD_PEERS"),
    e("peers_file", Str, "ETCD_PEERS_FILE"),
    ed("proxy", Str, "ETCD_PROXY", ETCD2_WHY),
    e("retry_interval", Float, "ETCD_RETRY_INTERVAL"),
    e("snapshot", Bool, "ETCD_SNAPSHOT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOTCOUNT"),
    e("trace", Str, "ETCD_TRACE"),
    e("verbose", Bool, "ETCD_VERBOSE"),
    e("very_verbose", Bool, "ETCD_VERY_VERBOSE"),
    e("very_very_verbose", Bool, "ETCD_VERY_VERY_VERBOSE"),
];

pub(crate) const ETCD2: &[Field] = &[
    e("advertise_client_urls", Str, "ETCD_ADVERTISE_CLIENT_URLS"),
    ed(
        "ca_file",
        Str,
        "ETCD_CA_FILE",
        "ca_file obsoleted by trusted_ca_file and client_cert_auth",
    ),
    e("cert_file", Str, "ETCD_CERT_FILE"),
    e("client_cert_auth", Bool, "ETCD_CLIENT_CERT_AUTH"),
    e("cors", Str, "ETCD_CORS"),
    e("data_dir", Str, "ETCD_DATA_DIR"),
    e("debug", Bool, "ETCD_DEBUG"),
    e("discovery", Str, "ETCD_DISCOVERY"),
    e("discovery_fallback", Str, "ETCD_DISCOVERY_FALLBACK"),
    e("discovery_srv", Str, "ETCD_DISCOVERY_SRV"),
    e("discovery_proxy", Str, "ETCD_DISCOVERY_PROXY"),
    e("election_timeout", Int, "ETCD_ELECTION_TIMEOUT"),
    e("enable_pprof", Bool, "ETCD_ENABLE_PPROF"),
    e("force_new_cluster", Bool, "ETCD_FORCE_NEW_CLUSTER"),
    e("heartbeat_interval", Int, "ETCD_HEARTBEAT_INTERVAL"),
    e(
        "initial_advertise_peer_urls",
        Str,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    ),
    e("initial_cluster", Str, "ETCD_INITIAL_CLUSTER"),
    e("initial_cluster_state", Str, "ETCD_INITIAL_CLUSTER_STATE"),
    e("initial_cluster_token", Str, "ETCD_INITIAL_CLUSTER_TOKEN"),
    e("key_file", Str, "ETCD_KEY_FILE"),
    e("listen_client_urls", Str, "ETCD_LISTEN_CLIENT_URLS"),
    e("listen_peer_urls", Str, "ETCD_LISTEN_PEER_URLS"),
    e("log_package_levels", Str, "ETCD_LOG_PACKAGE_LEVELS"),
    e("max_snapshots", Int, "ETCD_MAX_SNAPSHOTS"),
    e("max_wals", Int, "ETCD_MAX_WALS"),
    e("name", Str, "ETCD_NAME"),
    ed(
        "peer_ca_file",
        Str,
        "ETCD_PEER_CA_FILE",
        "peer_ca_file obsoleted peer_trusted_ca_file and peer_client_cert_auth",
    ),
    e("peer_cert_file", Str, "ETCD_PEER_CERT_FILE"),
    e("peer_key_file", Str, "ETCD_PEER_KEY_FILE"),
    e("peer_client_cert_auth", Bool, "ETCD_PEER_CLIENT_CERT_AUTH"),
    e("peer_trusted_ca_file", Str, "ETCD_PEER_TRUSTED_CA_FILE"),
    valid(e("proxy", Str, "ETCD_PROXY"), "^(on|off|readonly)$"),
    e("proxy_dial_timeout", Int, "ETCD_PROXY_DIAL_TIMEOUT"),
    e("proxy_failure_wait", Int, "ETCD_PROXY_FAILURE_WAIT"),
    e("proxy_read_timeout", Int, "ETCD_PROXY_READ_TIMEOUT"),
    e("proxy_refresh_interval", Int, "ETCD_PROXY_REFRESH_INTERVAL"),
    e("proxy_write_timeout", Int, "ETCD_PROXY_WRITE_TIMEOUT"),
    e("snapshot_count", Int, "ETCD_SNAPSHOT_COUNT"),
    e("strict_reconfig_check", Bool, "ETCD_STRICT_RECONFIG_CHECK"),
    e("trusted_ca_file", Str, "ETCD_TRUSTED_CA_FILE"),
    e("wal_dir", Str, "ETCD_WAL_DIR"),
];

pub(crate) const FLANNEL: &[Field] = &[
    e("etcd_endpoints", Str, "FLANNELD_ETCD_ENDPOINTS"),
    e("etcd_cafile", Str, "FLANNELD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "FLANNELD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "FLANNELD_ETCD_KEYFILE"),
    e("etcd_prefix", Str, "FLANNELD_ETCD_PREFIX"),
    e("etcd_username", Str, "FLANNELD_ETCD_USERNAME"),
    e("etcd_password", Str, "FLANNELD_ETCD_PASSWORD"),
    e("ip_masq", Str, "FLANNELD_IP_MASQ"),
    e("subnet_file", Str, "FLANNELD_SUBNET_FILE"),
    e("interface", Str, "FLANNELD_IFACE"),
    e("public_ip", Str, "FLANNELD_PUBLIC_IP"),
];

/// Why fleetd refuses the etcd password options.
const FLEET_AUTH_WHY: &str =
    "cairn's fleetd does not support etcd passwords (use TLS client certificates): fleet.service refuses to start with them";

/// fleet's options, with the values cairn's fleetd accepts (it refuses to
/// start on any other, naming the variable: see fleetd/src/config.rs).
pub(crate) const FLEET: &[Field] = &[
    valid(
        e("agent_ttl", Str, "FLEET_AGENT_TTL"),
        r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$",
    ),
    e("authorized_keys_file", Str, "FLEET_AUTHORIZED_KEYS_FILE"),
    e("disable_engine", Bool, "FLEET_DISABLE_ENGINE"),
    e(
        "engine_reconcile_interval",
        Float,
        "FLEET_ENGINE_RECONCILE_INTERVAL",
    ),
    valid(e("etcd_cafile", Str, "FLEET_ETCD_CAFILE"), "^/.*$"),
    valid(e("etcd_certfile", Str, "FLEET_ETCD_CERTFILE"), "^/.*$"),
    valid(e("etcd_keyfile", Str, "FLEET_ETCD_KEYFILE"), "^/.*$"),
    valid(
        e("etcd_key_prefix", Str, "FLEET_ETCD_KEY_PREFIX"),
        r"^/[^\s]*$",
    ),
    e("etcd_request_timeout", Float, "FLEET_ETCD_REQUEST_TIMEOUT"),
    valid(
        e("etcd_servers", Str, "FLEET_ETCD_SERVERS"),
        r"^\s*https?://[^\s,/]+/?\s*(,\s*https?://[^\s,/]+/?\s*)*$",
    ),
    ed("etcd_username", Str, "FLEET_ETCD_USERNAME", FLEET_AUTH_WHY),
    ed("etcd_password", Str, "FLEET_ETCD_PASSWORD", FLEET_AUTH_WHY),
    valid(
        e("metadata", Str, "FLEET_METADATA"),
        r"^\s*[^=,\s][^=,]*=[^,]*(,\s*[^=,\s][^=,]*=[^,]*)*$",
    ),
    valid(
        e("public_ip", Str, "FLEET_PUBLIC_IP"),
        r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|\$[a-z0-9_]+)$",
    ),
    e("token_limit", Int, "FLEET_TOKEN_LIMIT"),
    valid(e("verbosity", Int, "FLEET_VERBOSITY"), "^[0-2]$"),
    e("verify_units", Bool, "FLEET_VERIFY_UNITS"),
];

pub(crate) const LOCKSMITH: &[Field] = &[
    e("endpoint", Str, "LOCKSMITHD_ENDPOINT"),
    e("etcd_cafile", Str, "LOCKSMITHD_ETCD_CAFILE"),
    e("etcd_certfile", Str, "LOCKSMITHD_ETCD_CERTFILE"),
    e("etcd_keyfile", Str, "LOCKSMITHD_ETCD_KEYFILE"),
    e("etcd_username", Str, "LOCKSMITHD_ETCD_USERNAME"),
    e("etcd_password", Str, "LOCKSMITHD_ETCD_PASSWORD"),
    e("group", Str, "LOCKSMITHD_GROUP"),
    valid(
        e("window_start", Str, "REBOOT_WINDOW_START"),
        r"^((?i:sun|mon|tue|wed|thu|fri|sat|sun) )?0*([0-9]|1[0-9]|2[0-3]):0*([0-9]|[1-5][0-9])$",
    ),
    valid(
        e("window_length", Str, "REBOOT_WINDOW_LENGTH"),
        r"^[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+$",
    ),
];

pub(crate) const OEM: &[Field] = &[
    f("id", Str),
    f("name", Str),
    f("version_id", Str),
    f("home_url", Str),
    f("bug_report_url", Str),
];

pub(crate) const UPDATE: &[Field] = &[
    valid(
        e("reboot_strategy", Str, "REBOOT_STRATEGY"),
        "^(etcd-lock|reboot|off)$",
    ),
    e("group", Str, "GROUP"),
    e("server", Str, "SERVER"),
];

pub(crate) const DROP_IN: &[Field] = &[f("name", Str), f("content", Str)];

pub(crate) const UNIT: &[Field] = &[
    f("name", Str),
    f("mask", Bool),
    f("enable", Bool),
    f("runtime", Bool),
    f("content", Str),
    valid(
        f("command", Str),
        "^(start|stop|restart|reload|try-restart|reload-or-restart|reload-or-try-restart)$",
    ),
    f("drop_ins", Ty::StructSlice(DROP_IN)),
];

const IMPORT_WHY: &str =
    "trying to fetch from a remote endpoint introduces too many intermittent errors";

pub(crate) const USER: &[Field] = &[
    f("name", Str),
    f("passwd", Str),
    f("ssh_authorized_keys", StrSlice),
    deprecated(f("coreos_ssh_import_github", Str), IMPORT_WHY),
    deprecated(f("coreos_ssh_import_github_users", StrSlice), IMPORT_WHY),
    deprecated(f("coreos_ssh_import_url", Str), IMPORT_WHY),
    f("gecos", Str),
    f("homedir", Str),
    f("no_create_home", Bool),
    f("primary_group", Str),
    f("groups", StrSlice),
    f("no_user_group", Bool),
    f("system", Bool),
    f("no_log_init", Bool),
    f("shell", Str),
];

pub(crate) const FILE: &[Field] = &[
    valid(
        f("encoding", Str),
        r"^(base64|b64|gz|gzip|gz\+base64|gzip\+base64|gz\+b64|gzip\+b64)$",
    ),
    f("content", Str),
    f("owner", Str),
    f("path", Str),
    valid(f("permissions", Str), "^0?[0-7]{3,4}$"),
];

pub(crate) const COREOS: &[Field] = &[
    // cairn ships etcd 3 (Debian's etcd-server) and configures it from
    // `etcd2`; the etcd 0.4 options of the legacy section do not work there.
    deprecated(
        f("etcd", Ty::Struct(ETCD)),
        "etcd 0.4 options; cairn runs etcd 3, configure it with etcd2",
    ),
    f("etcd2", Ty::Struct(ETCD2)),
    f("flannel", Ty::Struct(FLANNEL)),
    f("fleet", Ty::Struct(FLEET)),
    f("locksmith", Ty::Struct(LOCKSMITH)),
    f("oem", Ty::Struct(OEM)),
    f("update", Ty::Struct(UPDATE)),
    f("units", Ty::StructSlice(UNIT)),
];

pub(crate) const CLOUD_CONFIG: &[Field] = &[
    f("ssh_authorized_keys", StrSlice),
    f("coreos", Ty::Struct(COREOS)),
    f("write_files", Ty::StructSlice(FILE)),
    f("hostname", Str),
    f("users", Ty::StructSlice(USER)),
    f("manage_etc_hosts", Str),
];

/// The fields of a settings section of `coreos` by its name.
pub(crate) fn coreos_section(name: &str) -> Option<&'static [Field]> {
    Some(match name {
        "etcd" => ETCD,
        "etcd2" => ETCD2,
        "fleet" => FLEET,
        "flannel" => FLANNEL,
        "locksmith" => LOCKSMITH,
        "update" => UPDATE,
        "oem" => OEM,
        _ => return None,
    })
}

/// Look up a key in a struct's fields.
pub(crate) fn field(fields: &'static [Field], name: &str) -> Option<&'static Field> {
    fields.iter().find(|f| f.name == name)
}
