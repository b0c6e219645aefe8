"""What operators use beyond the model admins: the operations dashboard and the audit log."""
