-- Meta's messaging limit: the unique users a business portfolio may reach with
-- business-initiated messages in a moving 24 hours. A number's budget is its
-- portfolio's: the operator's grouping (portfolio_id), else its WhatsApp Business
-- Account.
ALTER TABLE phone_numbers ADD COLUMN portfolio_id TEXT;

-- Each portfolio's limit as Meta last gave it (or the operator set it); -1 is
-- unlimited, no row is unknown (not enforced). reached_at: when the budget was last
-- found full (logged once), cleared when the limit changes.
CREATE TABLE messaging_limits (
    portfolio_id TEXT PRIMARY KEY NOT NULL,
    messaging_limit BIGINT NOT NULL,
    source TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    reached_at BIGINT
);

-- The users each portfolio reached with a business-initiated message, and when last:
-- those reached in the last 24 hours use the budget.
CREATE TABLE portfolio_reach (
    portfolio_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    reached_at BIGINT NOT NULL,
    PRIMARY KEY (portfolio_id, contact_id)
);
CREATE INDEX portfolio_reach_window ON portfolio_reach (portfolio_id, reached_at);
CREATE INDEX portfolio_reach_contact ON portfolio_reach (contact_id);

-- Since when a queued send waits for room in its portfolio's budget.
ALTER TABLE outbox ADD COLUMN limit_held_since BIGINT;
