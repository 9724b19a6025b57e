//! PostgreSQL connections: conninfo handling and the SQL the other rooms need.
//!
//! - [`conninfo`]: libpq `keyword=value` strings, Barman's validity rule, masking.
//! - [`params`] and [`pgpass`]: libpq's defaults, environment and password file.
//! - [`tls`]: `sslmode` on rustls (ring).
//! - [`connection`]: opening the SQL session.
//! - [`queries`]: Barman's typed questions over it.
//! - [`replication`]: the physical replication protocol (walsender sessions).
//! - [`remote_status`]: what `check` and `status` gather in one call.

pub mod connection;
pub mod conninfo;
pub mod error;
pub mod params;
pub mod pgpass;
pub mod queries;
pub mod remote_status;
pub mod replication;
pub mod tls;

pub use connection::{MINIMAL_VERSION, PgConnection, int_version_to_string_version, major_version, simplify_version};
pub use conninfo::{Conninfo, ConninfoError, mask_password};
pub use error::PgError;
pub use params::{ConnParams, DEFAULT_CONNECT_TIMEOUT, Host, LibpqEnv, Password, SslMode};
pub use queries::{
    ArchiverStats, BackupStop, ClientKind, ConfigurationFiles, ReplicationSlot, SlotType, StatReplication, XlogInfo,
    parse_synchronous_standby_names,
};
pub use remote_status::PostgresStatus;
pub use tls::TlsError;
