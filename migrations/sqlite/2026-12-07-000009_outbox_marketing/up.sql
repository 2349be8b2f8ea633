-- Whether a send is a marketing template: checked again against the contact's
-- opt-out and objection when it leaves, not only when it is accepted.
ALTER TABLE outbox ADD COLUMN marketing BOOLEAN NOT NULL DEFAULT FALSE;
