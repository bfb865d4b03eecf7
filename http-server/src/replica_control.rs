//! The contract between a replica and the lifecycle manager that parks and resumes it: where
//! the token comes from and which header carries it. Here because both sides depend on this
//! crate and on no other Siesta crate in common.

/// The environment variable that gives a replica its control token (never an argument: those
/// are visible to every user of the host).
pub const TOKEN_ENV: &str = "SIESTA_CONTROL_TOKEN";
/// The request header that carries it.
pub const TOKEN_HEADER: &str = "x-siesta-control-token";
/// Tier report (GET), park and resume (POST) on the replica's HTTP port.
pub const REPORT_PATH: &str = "/siesta/replica";
pub const PARK_PATH: &str = "/siesta/replica/park";
pub const RESUME_PATH: &str = "/siesta/replica/resume";
/// Set by the local backend to its own process id: a replica whose parent is no longer that
/// process (`siesta up` was killed with SIGKILL and could not stop it) drains and exits instead
/// of holding its memory forever.
pub const PARENT_ENV: &str = "SIESTA_PARENT_PID";
