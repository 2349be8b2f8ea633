ALTER TABLE outbox DROP COLUMN limit_held_since;
DROP TABLE portfolio_reach;
DROP TABLE messaging_limits;
ALTER TABLE phone_numbers DROP COLUMN portfolio_id;
