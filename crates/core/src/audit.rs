//! Security events: written to the `tessera::audit` log target and to the audit port.

use crate::ports::{AuditEvent, AuditKind};
use crate::Tessera;

impl Tessera {
    /// Writes a security event to the `tessera::audit` target and the audit log.
    pub(crate) async fn audit(&self, kind: AuditKind, client_id: Option<&str>, user_id: Option<&str>, detail: &str) {
        tracing::warn!(target: "tessera::audit", kind = kind.as_str(), client_id, user_id, detail);
        let event = AuditEvent {
            at: self.now(),
            kind,
            client_id: client_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.audit_log.record_event(&event).await {
            tracing::error!(target: "tessera::audit", error = %e, kind = kind.as_str(), "could not store an audit event");
        }
    }
}
