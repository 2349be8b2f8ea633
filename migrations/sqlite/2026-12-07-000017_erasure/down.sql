DROP TABLE keystore.erasures;
ALTER TABLE privacy_requests DROP COLUMN outcome_json;
ALTER TABLE privacy_requests DROP COLUMN route_bidx;
