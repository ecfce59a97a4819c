//! The audit trail: one structured log line per verdict that is not a plain
//! allow (warn level), and per allow at debug level. Never the object body,
//! never credentials.

use crate::echo::Capped;
use crate::policy::Decision;
use kube::core::admission::Operation;
use std::time::Duration;

/// The log target of audit lines, for filtering (`stale_guard::audit=info`).
pub const TARGET: &str = "stale_guard::audit";

fn operation(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Logs the verdict for `req`.
pub fn record(req: &crate::admission::Request<'_>, decision: &Decision, latency: Duration) {
    let hex = |r: Option<crate::policy::Revision>| r.map(|r| r.to_hex()).unwrap_or_default();
    let sum = |c: Option<crate::checksum::Checksum>| c.map(|c| c.to_string()).unwrap_or_default();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: TARGET,
                // Request fields are capped like every echoed value (the
                // detail is a decision message, bounded where it is made).
                uid = %Capped(&req.uid),
                operation = operation(&req.operation),
                kind = %Capped(&req.kind.kind),
                group = %Capped(&req.kind.group),
                namespace = %Capped(req.namespace.as_deref().unwrap_or("")),
                name = %Capped(&req.name),
                user = %Capped(req.user_info.username.as_deref().unwrap_or("")),
                dry_run = req.dry_run,
                rule = decision.rule.as_deref().unwrap_or(""),
                reason = decision.reason.as_str(),
                allowed = decision.allowed,
                overridden = decision.overridden.map(|r| r.as_str()).unwrap_or(""),
                revision = %hex(decision.revision),
                head = %hex(decision.head),
                expected_checksum = %sum(decision.expected_checksum),
                found_checksum = %sum(decision.found_checksum),
                field = decision.field.as_deref().unwrap_or(""),
                latency_ms = latency.as_secs_f64() * 1000.0,
                detail = %decision.message,
                "admission verdict"
            )
        };
    }
    if decision.is_denial() {
        line!(warn);
    } else {
        line!(debug);
    }
}
