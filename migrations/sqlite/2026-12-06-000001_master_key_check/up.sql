-- A check value of the master key (an HMAC of a fixed label under it), recorded when
-- the first key is used with this database: a missing or different key file is then
-- refused by name instead of silently creating a new key that opens none of the data.
CREATE TABLE master_key_check (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    check_value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
