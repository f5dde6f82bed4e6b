//! cairn-cloudconfig: cloud-config user-data as coreos-cloudinit reads it: the typed model, the validator
//! (`coreos-cloudinit -validate` rules and wording), `$public_ipv4`-style substitution and the settings' environment variables.

mod decode;
mod env;
mod model;
mod names;
mod parse;
mod schema;
mod substitute;
mod validate;
mod yaml;

pub use decode::{decode_content, decompress_user_data, parse_mode, ENCODINGS, MAX_DECOMPRESSED};
pub use env::environment;
pub use model::{
    CloudConfig, Coreos, DecodeError, DropIn, ModeError, ParseError, Unit, Update, User, UserData,
    WriteFile, UNIT_COMMANDS,
};
pub use names::{
    check_account_name, check_group, check_hostname, NameError, ACCOUNT_NAME_MAX, HOSTNAME_MAX,
};
pub use parse::parse_user_data;
pub use substitute::{substitute, Addresses, VARIABLES};
pub use validate::{format_findings, validate, Finding, Kind, Report};
